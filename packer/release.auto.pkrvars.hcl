# Pinned inputs of a release build. The source AMI is not pinned: the newest ECS-optimized
# AL2023 AMI that matches source_ami_name is used, and its id and name go into the AMI's tags.
criu_version    = "4.2.1"
ami_name_prefix = "arch-al2023-ecs"
instance_type   = "m5.large"
volume_size_gb  = 30
