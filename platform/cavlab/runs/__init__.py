"""What a run leaves: run directories (`rundir`), their plots (`plot`), and interval statistics over
runs (`stats`)."""
