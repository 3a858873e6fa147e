# The same provisioning against the host running packer (a null source, no communicator): the
# wheel through the role (ansible/install.sh), then archctl verify, then, into a directory named
# by local_clean_root only (never this host's own /), the clean-up an AMI gets before its
# snapshot. `archctl ami build --local` runs it; it is what packer 1.6.6 can build, and it
# proves the chain on a machine without AWS access.

build {
  name    = "local"
  sources = ["source.null.local"]

  provisioner "shell-local" {
    inline = ["echo '${var.arch_wheel_sha256}  ${var.arch_wheel}' | sha256sum --check --strict"]
  }

  provisioner "shell-local" {
    inline = [
      var.local_provision
      ? "bash '${local.ansible_dir}/install.sh' -e arch_package_file='${var.arch_wheel}' -e arch_install_docker=${var.local_install_docker} -e arch_criu_version=${var.criu_version}"
      : "echo 'local_provision=false: the role does not run'",
    ]
  }

  provisioner "shell-local" {
    inline = [var.local_provision ? "/usr/local/bin/archctl verify" : "echo 'local_provision=false: no archctl verify'"]
  }

  provisioner "shell-local" {
    inline = [
      var.local_clean_root == ""
      ? "echo 'local_clean_root is empty: no clean-up'"
      : "bash '${path.root}/scripts/clean-image.sh' --root '${var.local_clean_root}'",
    ]
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      flavour           = "local"
      arch_version      = var.arch_version
      arch_wheel        = basename(var.arch_wheel)
      arch_wheel_sha256 = var.arch_wheel_sha256
      source_revision   = var.arch_source_revision
      cleaned_root      = var.local_clean_root
    }
  }
}
