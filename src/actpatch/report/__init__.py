"""Report: turning labelled results into things people read (tables now; plots and HTML to come)."""
