"""Operations on the containers of this host through containerd (archctl list / checkpoint)."""
