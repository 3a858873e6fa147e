# Pinned inputs of a release build. The source AMIs are not pinned: the recommended
# ECS-optimized AL2023 AMIs (AWS's public SSM parameters) are used unless source_ami_x86_64 /
# source_ami_arm64 name one; the id and name used go into the AMI's tags.
criu_version        = "4.2.1"
ami_name_prefix     = "arch-al2023-ecs"
instance_type       = "m5.large"
instance_type_arm64 = "m6g.large"
volume_size_gb      = 30
