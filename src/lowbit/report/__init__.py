"""Reports: tables and plots made from run folders (and from arrays handed in). Never imports models."""
