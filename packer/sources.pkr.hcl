# The machines the builds provision. Flavour files (ecs.pkr.hcl, batch.pkr.hcl) use this Amazon
# Linux 2023 source once per architecture, each with its source AMI (source_ami.pkr.hcl) and
# instance type; local.pkr.hcl provisions the host running packer.

source "amazon-ebs" "al2023" {
  region = var.region
  # IMDSv2 only, on the build instance and on instances started from the AMI.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
  }
  imds_support = "v2.0"
  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = var.volume_size_gb
    volume_type           = "gp3"
    delete_on_termination = true
  }
  user_data            = local.build_instance_user_data
  ssh_username         = "ec2-user"
  subnet_id            = var.subnet_id
  iam_instance_profile = var.iam_instance_profile
  run_tags             = local.build_tags
}

source "null" "local" {
  communicator = "none"
}
