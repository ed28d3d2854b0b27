"""Data: the procedural Shapes world (`shapes`), the oracle that scores its images (`oracle`),
and real image-caption data: COCO, tables of pairs, WebDataset shards (`captions`)."""
