# Variables, plugin requirements and shared values of the ARCH AMI builds.
#
# Packer >= 1.7 reads the `packer` block below: run `packer init .` once to install the plugins.
# Debian's packer 1.6.6 predates required_plugins (its amazon builder and ansible provisioner
# are built in): `archctl ami` hands it a copy of this directory without the `packer` block and
# builds or validates only the null source there (see docs/bake-an-ami.md).
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    # Exact versions: a rebuild of a release gets the same builder and provisioner.
    amazon = {
      version = "= 1.8.0"
      source  = "github.com/hashicorp/amazon"
    }
    ansible = {
      version = "= 1.1.5"
      source  = "github.com/hashicorp/ansible"
    }
  }
}

variable "arch_version" {
  type        = string
  description = "Version of the arch package being baked (archctl ami passes it)."
  default     = "0.1.0"
  validation {
    condition     = length(split(".", var.arch_version)) >= 3 && length(split(" ", var.arch_version)) == 1
    error_message = "The arch_version must be a version such as 1.2.3 (MAJOR.MINOR.PATCH...)."
  }
}

variable "arch_wheel" {
  type        = string
  description = "The arch wheel the image receives: archctl ami build passes the one it runs from (built from a checkout, or the installed package packed again), or --wheel."
  validation {
    condition     = element(reverse(split(".", var.arch_wheel)), 0) == "whl"
    error_message = "The arch_wheel must be the path of an arch wheel file (.whl)."
  }
}

variable "arch_wheel_sha256" {
  type        = string
  description = "sha256 of arch_wheel (hex). Checked where the wheel is installed, before the role runs; recorded in the manifest."
  validation {
    condition     = length(var.arch_wheel_sha256) == 64 && lower(var.arch_wheel_sha256) == var.arch_wheel_sha256
    error_message = "The arch_wheel_sha256 must be a sha256 digest: 64 lower-case hex characters."
  }
}

variable "arch_source_revision" {
  type        = string
  description = "Source revision (git commit) of the checkout being baked, recorded in tags and the manifest."
  default     = "unknown"
}

variable "region" {
  type        = string
  description = "AWS region the AMI is built in."
  default     = "us-east-1"
  validation {
    condition     = length(split("-", var.region)) >= 3 && lower(var.region) == var.region
    error_message = "The region must be an AWS region name such as eu-west-1 (lower case)."
  }
}

variable "source_ami_x86_64" {
  type        = string
  description = "The x86_64 source AMI id. Empty: the recommended ECS-optimized AL2023 AMI, read from AWS's public SSM parameter source_ami_ssm_parameter_x86_64."
  default     = ""
  validation {
    condition     = var.source_ami_x86_64 == "" || substr(var.source_ami_x86_64, 0, 4) == "ami-"
    error_message = "The source_ami_x86_64 must be an AMI id (ami-...) or empty."
  }
}

variable "source_ami_arm64" {
  type        = string
  description = "The arm64 source AMI id. Empty: the recommended ECS-optimized AL2023 arm64 AMI, read from source_ami_ssm_parameter_arm64."
  default     = ""
  validation {
    condition     = var.source_ami_arm64 == "" || substr(var.source_ami_arm64, 0, 4) == "ami-"
    error_message = "The source_ami_arm64 must be an AMI id (ami-...) or empty."
  }
}

# "Retrieving Amazon ECS-optimized Linux AMI metadata": AWS publishes the recommended AMI's id
# under these public parameters (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/
# retrieve-ecs-optimized_AMI.html).
variable "source_ami_ssm_parameter_x86_64" {
  type        = string
  description = "Public SSM parameter holding the recommended x86_64 ECS-optimized AL2023 AMI id."
  default     = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"
  validation {
    condition     = substr(var.source_ami_ssm_parameter_x86_64, 0, 1) == "/"
    error_message = "The source_ami_ssm_parameter_x86_64 must be an SSM parameter name (/...)."
  }
}

variable "source_ami_ssm_parameter_arm64" {
  type        = string
  description = "Public SSM parameter holding the recommended arm64 ECS-optimized AL2023 AMI id."
  default     = "/aws/service/ecs/optimized-ami/amazon-linux-2023/arm64/recommended/image_id"
  validation {
    condition     = substr(var.source_ami_ssm_parameter_arm64, 0, 1) == "/"
    error_message = "The source_ami_ssm_parameter_arm64 must be an SSM parameter name (/...)."
  }
}

variable "ami_name_prefix" {
  type        = string
  description = "Prefix of the baked AMI's name; the flavour, version and a timestamp follow."
  default     = "arch-al2023-ecs"
  validation {
    condition     = length(var.ami_name_prefix) >= 3 && length(var.ami_name_prefix) <= 80 && length(split(" ", var.ami_name_prefix)) == 1
    error_message = "The ami_name_prefix must be 3 to 80 characters without spaces."
  }
}

variable "instance_type" {
  type        = string
  description = "Instance type of the x86_64 build instance."
  default     = "m5.large"
}

variable "instance_type_arm64" {
  type        = string
  description = "Instance type of the arm64 (Graviton) build instance."
  default     = "m6g.large"
}

variable "volume_size_gb" {
  type        = number
  description = "Root volume size of the AMI, GiB."
  default     = 30
  validation {
    condition     = var.volume_size_gb >= 30
    error_message = "The ECS-optimized AL2023 AMI needs a root volume of at least 30 GiB."
  }
}

variable "subnet_id" {
  type        = string
  description = "Subnet of the build instance (empty: the default VPC)."
  default     = ""
}

variable "iam_instance_profile" {
  type        = string
  description = "Instance profile of the build instance (empty: none)."
  default     = ""
}

variable "criu_version" {
  type        = string
  description = "CRIU release the role installs when the distribution's does not pass criu check."
  validation {
    condition     = length(split(".", var.criu_version)) >= 2
    error_message = "The criu_version must be a release number such as 4.2.1."
  }
}

variable "ansible_dir" {
  type        = string
  description = "The project's ansible/ directory (empty: the one beside this directory)."
  default     = ""
}

variable "ansible_playbook" {
  type        = string
  description = "ansible-playbook on the machine running packer (AMI builds run the role over SSH)."
  default     = "ansible-playbook"
}

variable "local_install_docker" {
  type        = bool
  description = "The local (null) build: also install Docker on this host."
  default     = false
}

variable "local_provision" {
  type        = bool
  description = "The local (null) build: run the role and archctl verify on this host (false: only the wheel check, the clean-up and the manifest)."
  default     = true
}

variable "local_clean_root" {
  type        = string
  description = "The local (null) build: remove instance state (scripts/clean-image.sh) under this directory, a chroot or mounted image tree. Empty: no clean-up. Never /: the local build provisions the machine running packer, which keeps its SSH host keys, machine-id and logs."
  default     = ""
  validation {
    condition     = var.local_clean_root == "" || (substr(var.local_clean_root, 0, 1) == "/" && trim(var.local_clean_root, "/.") != "")
    error_message = "The local_clean_root must be an absolute directory other than / (the local build runs on this machine)."
  }
}

variable "manifest_path" {
  type        = string
  description = "Where the manifest post-processor writes what was built."
  default     = "packer-manifest.json"
}

variable "tags" {
  type        = map(string)
  description = "Extra tags for the AMI and its snapshots."
  default     = {}
}

locals {
  ansible_dir = var.ansible_dir != "" ? var.ansible_dir : "${path.root}/../ansible"
  # Where the AMI builds put the wheel on the build instance (the role installs it from there).
  remote_wheel = "/tmp/arch-wheel/${basename(var.arch_wheel)}"
  # What every image says about its making; the flavours add theirs.
  build_tags = merge(var.tags, {
    "arch:version"         = var.arch_version
    "arch:wheel-sha256"    = var.arch_wheel_sha256
    "arch:source-revision" = var.arch_source_revision
    "arch:source-ami"      = "{{ .SourceAMI }}"
    "arch:source-ami-name" = "{{ .SourceAMIName }}"
    "arch:criu-version"    = var.criu_version
  })
  # The role's variables for an ECS/Batch host: the ECS agent runs tasks through Docker, whose
  # default runtime must then be arch-runc (Docker comes with the ECS-optimized AMI). arch_ecs:
  # the agent's Spot settings for the flavour's arch_platform (ecs: instance draining and a
  # two-minute stop timeout; batch: draining off, the jobs are held until the host goes).
  ami_role_vars = {
    arch_docker_default_runtime = true
    arch_install_docker         = false
    arch_ecs                    = true
    arch_criu_version           = var.criu_version
    arch_package_file           = local.remote_wheel
  }
  # The build instance must never register with ECS: the ECS-optimized AMI enables ecs.service,
  # which starts once cloud-final is done (the agent's unit is ordered
  # After=cloud-final.service, "Amazon ECS container agent configuration"/ecs-init packaging)
  # and, without ECS_CLUSTER, joins the cluster named "default". This user data runs inside
  # cloud-final, before the agent could start: it cancels the queued start (--no-block: a
  # blocking stop here would wait on cloud-final itself) and keeps the unit from starting again.
  build_instance_user_data = <<-EOT
    #!/bin/bash
    systemctl mask --runtime ecs.service
    systemctl stop --no-block ecs.service
  EOT
  # First provisioner of an AMI build: the same guarantee once connected (user data may have
  # been ignored), then the wheel's directory.
  stop_agent_commands = [
    "sudo systemctl mask --runtime ecs.service",
    "sudo systemctl stop ecs.service",
    "if systemctl is-active --quiet ecs.service; then echo 'the ECS agent still runs' >&2; exit 1; fi",
    "mkdir -p /tmp/arch-wheel",
  ]
  # After archctl verify: ARCH's instance attribute goes into ecs.config (ARCH's task
  # definitions require it: arch/delivery/ecs_admission.py; the cluster comes from each
  # instance's user data), and the agent starts at the instance's boot again. The clean-up
  # (scripts/clean-image.sh) is the last step before the snapshot.
  enable_agent_commands = [
    "sudo /opt/arch/venv/bin/python -m arch.delivery.ecs_admission admit",
    "sudo systemctl unmask --runtime ecs.service",
    "sudo systemctl enable ecs.service",
  ]
  check_wheel_command = "echo '${var.arch_wheel_sha256}  ${local.remote_wheel}' | sha256sum --check --strict"
}
