"""Data: the procedural Shapes world (`shapes`) and the oracle that scores its images (`oracle`)."""
