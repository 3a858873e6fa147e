# ARCH AMI for ECS container instances: the ECS-optimized AL2023 AMI plus the ARCH appliance,
# Docker's default runtime arch-runc, the Spot watcher and the ECS agent's Spot settings.

build {
  name = "ecs"

  source "source.amazon-ebs.al2023" {
    name            = "ecs-x86_64"
    source_ami      = local.source_ami_x86_64
    instance_type   = var.instance_type
    ami_name        = "${var.ami_name_prefix}-ecs-x86_64-${var.arch_version}-{{ timestamp }}"
    ami_description = "ARCH ${var.arch_version} checkpoint/restore appliance on the ECS-optimized AL2023 AMI, x86_64 (ECS)"
    tags            = merge(local.build_tags, { "arch:flavour" = "ecs", "arch:architecture" = "x86_64" })
    snapshot_tags   = merge(local.build_tags, { "arch:flavour" = "ecs", "arch:architecture" = "x86_64" })
  }

  source "source.amazon-ebs.al2023" {
    name            = "ecs-arm64"
    source_ami      = local.source_ami_arm64
    instance_type   = var.instance_type_arm64
    ami_name        = "${var.ami_name_prefix}-ecs-arm64-${var.arch_version}-{{ timestamp }}"
    ami_description = "ARCH ${var.arch_version} checkpoint/restore appliance on the ECS-optimized AL2023 AMI, arm64 (ECS)"
    tags            = merge(local.build_tags, { "arch:flavour" = "ecs", "arch:architecture" = "arm64" })
    snapshot_tags   = merge(local.build_tags, { "arch:flavour" = "ecs", "arch:architecture" = "arm64" })
  }

  provisioner "shell" {
    inline = local.stop_agent_commands
  }

  provisioner "file" {
    source      = var.arch_wheel
    destination = local.remote_wheel
  }

  provisioner "shell" {
    inline = [local.check_wheel_command]
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
    inline = concat(["sudo /usr/local/bin/archctl verify"], local.enable_agent_commands)
  }

  # Last: instance state out of the image (the wheel's directory under /tmp goes with it).
  provisioner "shell" {
    script          = "${path.root}/scripts/clean-image.sh"
    execute_command = "chmod +x {{ .Path }}; sudo {{ .Vars }} {{ .Path }} --root / --live-image"
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      flavour           = "ecs"
      arch_version      = var.arch_version
      arch_wheel        = basename(var.arch_wheel)
      arch_wheel_sha256 = var.arch_wheel_sha256
      source_revision   = var.arch_source_revision
    }
  }
}
