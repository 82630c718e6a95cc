"""Reading runs back: event files and summaries in, configurations across seeds, reports and the runs list out."""
