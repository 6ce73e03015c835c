"""Detection as a task: COCO mAP evaluation by pycocotools and labelled-box drawings."""
