# ARCH AMI for ECS container instances: the ECS-optimized AL2023 AMI plus the ARCH appliance,
# Docker's default runtime arch-runc, the Spot watcher and the ECS agent's Spot settings.

build {
  name = "ecs"

  source "source.amazon-ebs.al2023" {
    name            = "ecs"
    ami_name        = "${var.ami_name_prefix}-ecs-${var.arch_version}-{{ timestamp }}"
    ami_description = "ARCH ${var.arch_version} checkpoint/restore appliance on the ECS-optimized AL2023 AMI (ECS)"
    tags            = merge(local.build_tags, { "arch:flavour" = "ecs" })
    snapshot_tags   = merge(local.build_tags, { "arch:flavour" = "ecs" })
  }

  provisioner "ansible" {
    command       = var.ansible_playbook
    playbook_file = "${local.ansible_dir}/site.yml"
    user          = "ec2-user"
    use_proxy     = false
    extra_arguments = [
      "--become",
      "--extra-vars", jsonencode(merge(local.ami_role_vars, { arch_platform = "ecs" })),
    ]
    ansible_env_vars = ["ANSIBLE_CONFIG=${local.ansible_dir}/ansible.cfg"]
  }

  provisioner "shell" {
    inline = ["sudo /usr/local/bin/archctl verify"]
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      flavour         = "ecs"
      arch_version    = var.arch_version
      source_revision = var.arch_source_revision
      source_ami_name = var.source_ami_name
    }
  }
}
