# Variables, plugin requirements and shared values of the ARCH AMI builds.
#
# Packer >= 1.7 reads the `packer` block below: run `packer init .` once to install the plugins.
# Debian's packer 1.6.6 predates required_plugins (its amazon builder and ansible provisioner
# are built in): `archctl ami` hands it a copy of this directory without the `packer` block and
# builds or validates only the null source there (see docs/bake-an-ami.md).
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
    ansible = {
      version = ">= 1.1.0"
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

variable "source_ami_name" {
  type        = string
  description = "Name filter of the ECS-optimized Amazon Linux 2023 AMI to start from (newest match wins)."
  default     = "al2023-ami-ecs-hvm-*-x86_64"
  validation {
    condition     = substr(var.source_ami_name, 0, 19) == "al2023-ami-ecs-hvm-"
    error_message = "The source_ami_name must select an ECS-optimized Amazon Linux 2023 AMI (al2023-ami-ecs-hvm-...)."
  }
}

variable "source_ami_owners" {
  type        = list(string)
  description = "Owners the source AMI may come from."
  default     = ["amazon"]
  validation {
    condition     = length(var.source_ami_owners) > 0
    error_message = "At least one source AMI owner is needed."
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
  description = "Instance type of the build instance."
  default     = "m5.large"
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
  # What every image says about its making; the flavours add theirs.
  build_tags = merge(var.tags, {
    "arch:version"         = var.arch_version
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
  }
}
