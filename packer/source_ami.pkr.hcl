# The source AMIs: the ids given, else the recommended ECS-optimized AL2023 AMIs that AWS
# publishes as public SSM parameters, read when the build starts (the amazon plugin's
# amazon-parameterstore data source; reading them needs ssm:GetParameters).
#
# Packer < 1.7 has no data sources, and the local build reads nothing from AWS: for those,
# `archctl ami` replaces this file, in its staged copy of packer/, with one that only takes the
# given ids (arch/packer/ami.py, OFFLINE_SOURCE_AMI).

data "amazon-parameterstore" "ecs_ami_x86_64" {
  name   = var.source_ami_ssm_parameter_x86_64
  region = var.region
}

data "amazon-parameterstore" "ecs_ami_arm64" {
  name   = var.source_ami_ssm_parameter_arm64
  region = var.region
}

locals {
  source_ami_x86_64 = var.source_ami_x86_64 != "" ? var.source_ami_x86_64 : data.amazon-parameterstore.ecs_ami_x86_64.value
  source_ami_arm64  = var.source_ami_arm64 != "" ? var.source_ami_arm64 : data.amazon-parameterstore.ecs_ami_arm64.value
}
