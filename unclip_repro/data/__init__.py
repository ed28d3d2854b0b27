"""Data: the procedural Shapes world (`shapes`), the oracle that scores its images (`oracle`),
real image-caption data: COCO, tables of pairs, WebDataset shards (`captions`), and stand-ins
for a download: a generated COCO-format folder and a random open_clip file (`generated`)."""
