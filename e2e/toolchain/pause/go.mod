// Our own pause program: the real node's sandbox ("pause") image, since no registry is reachable.
// It depends on nothing but the standard library; its version is ours (pause v1.0.0, pinned in
// versions.env as PAUSE_VERSION), and build.sh stamps it so `pause -v` prints it.
module tenantry.dev/e2e/toolchain/pause

go 1.26.0
