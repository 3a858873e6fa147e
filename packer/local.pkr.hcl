# The same provisioning against the host running packer (a null source, no communicator): the
# role through ansible/install.sh, then archctl verify. `archctl ami build --local` runs it; it
# is what packer 1.6.6 can build, and it proves the chain on a machine without AWS access.

build {
  name    = "local"
  sources = ["source.null.local"]

  provisioner "shell-local" {
    inline = [
      "bash '${local.ansible_dir}/install.sh' -e arch_install_docker=${var.local_install_docker} -e arch_criu_version=${var.criu_version}",
    ]
  }

  provisioner "shell-local" {
    inline = ["/usr/local/bin/archctl verify"]
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      flavour         = "local"
      arch_version    = var.arch_version
      source_revision = var.arch_source_revision
    }
  }
}
