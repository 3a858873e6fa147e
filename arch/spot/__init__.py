"""EC2 Spot: the instance-metadata watcher that checkpoints ARCH containers before reclaim."""
