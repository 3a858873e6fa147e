"""archctl's delivery subcommands (template, userdata, ami, remote): they render, build and
reach other hosts, and import jinja2, Packer's driver or Fabric only when they run."""
