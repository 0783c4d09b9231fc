package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/nbdroot/nbdroot/initramfs"
)

// mkinitramfsDoc is the help of `nbdroot mkinitramfs`.
const mkinitramfsDoc = `Writes a reproducible initramfs with nbdroot as /init, the default kernel
modules and their dependencies, the spec and TLS files, and optionally a
rescue shell.
With --base-only the same archive has no /init: a base for u-root, whose
busybox brings nbdroot (u-root -base FILE -initcmd=nbdroot ... ./cmd/nbdroot).
With --modules-only it writes just the module tree.`

// mkinitramfsCmd holds the flags of mkinitramfs: those of initramfs's
// options in opts, the others beside.
type mkinitramfsCmd struct {
	fs                                 *flag.FlagSet
	opts                               initramfs.Options
	out, modulesOnly, kernel, compress string
}

// mkinitramfsFlags registers the flags of mkinitramfs, which writes an
// initramfs with this binary (or --binary) as /init, a base archive without
// /init (--base-only), or the module tree alone (--modules-only).
func mkinitramfsFlags(fs *flag.FlagSet) runFunc {
	m := &mkinitramfsCmd{fs: fs}
	o := &m.opts
	fs.StringVar(&m.out, "o", "", "write the archive to `FILE`")
	fs.StringVar(&o.KernelVersion, "kver", "", "kernel `VERSION` whose modules to carry (default: the newest in --modules-dir)")
	fs.StringVar(&m.kernel, "kernel", "", "take the kernel version from the bzImage at `PATH`")
	fs.StringVar(&o.ModulesDir, "modules-dir", initramfs.DefaultModulesDir, "`DIR` holding VERSION/modules.dep")
	fs.StringVar(&o.ConfigFile, "config", "", "install the spec TOML `FILE` as /etc/nbdroot.toml, with the TLS files it names")
	fs.Func("module", "also carry kernel module `NAME` and its dependencies (repeatable)", func(s string) error {
		if s == "" {
			return errors.New("empty value")
		}
		o.Modules = append(o.Modules, s)
		return nil
	})
	fs.Func("file", "copy host file `SRC[:DST]` into the image (repeatable)", m.addFile)
	fs.StringVar(&m.compress, "compress", string(initramfs.Gzip), "compress with `METHOD`: gzip, zstd, xz or none")
	fs.StringVar(&o.Binary, "binary", "", "install `PATH` as /init (default: this nbdroot binary)")
	fs.StringVar(&m.modulesOnly, "modules-only", "", "write only the module tree, into `DIR`/lib/modules/VERSION")
	fs.StringVar(&o.Shell, "shell", "", "install the static shell at `PATH` for boot.on_failure = \"shell\" (busybox: as /bin/busybox with /bin/sh and applet links)")
	fs.BoolVar(&o.BaseOnly, "base-only", false, "leave out /init: a base archive for u-root's -base with -initcmd=nbdroot (uncompressed unless --compress)")
	return m.run
}

// addFile takes one --file SRC[:DST].
func (m *mkinitramfsCmd) addFile(s string) error {
	src, dst, ok := strings.Cut(s, ":")
	if !ok {
		dst = src
	}
	if src == "" || dst == "" {
		return fmt.Errorf("%q is not SRC:DST", s)
	}
	if !strings.HasPrefix(dst, "/") {
		if ok {
			return fmt.Errorf("%q: the image path %q must be absolute", s, dst)
		}
		return fmt.Errorf("%q: without :DST the source must be absolute, to name the same path in the image", s)
	}
	m.opts.Files = append(m.opts.Files, initramfs.File{Src: src, Dst: dst})
	return nil
}

func (m *mkinitramfsCmd) run(ctx context.Context, sio stdio, args []string) error {
	out, modulesOnly, opts := m.out, m.modulesOnly, m.opts
	switch {
	case len(args) > 0:
		return usagef("unexpected argument %q", args[0])
	case out == "" && modulesOnly == "":
		return usagef("-o FILE is required")
	case out != "" && modulesOnly != "":
		return usagef("-o and --modules-only are mutually exclusive")
	case opts.KernelVersion != "" && m.kernel != "":
		return usagef("--kver and --kernel are mutually exclusive")
	case opts.BaseOnly && modulesOnly != "":
		return usagef("--base-only and --modules-only are mutually exclusive")
	case opts.BaseOnly && opts.Binary != "":
		return usagef("--base-only writes no /init, so --binary has nothing to do")
	}
	compress := m.compress
	if opts.BaseOnly && !flagGiven(m.fs, "compress") {
		// u-root's -base reads a plain cpio archive.
		compress = string(initramfs.None)
	}
	var err error
	if opts.Compression, err = initramfs.ParseCompression(compress); err != nil {
		return usagef("--compress: %v", err)
	}
	if m.kernel != "" {
		if opts.KernelVersion, err = initramfs.KernelVersion(m.kernel); err != nil {
			return fmt.Errorf("mkinitramfs: --kernel: %w (use --kver)", err)
		}
	}
	if opts.Binary == "" && modulesOnly == "" && !opts.BaseOnly {
		if opts.Binary, err = os.Executable(); err != nil {
			return fmt.Errorf("mkinitramfs: finding this binary: %w (use --binary)", err)
		}
	}
	var r *initramfs.Report
	if modulesOnly != "" {
		r, err = initramfs.WriteModuleTree(ctx, modulesOnly, opts)
	} else {
		r, err = writeImage(ctx, out, opts)
	}
	if err != nil {
		return fmt.Errorf("mkinitramfs: %w", err)
	}
	fmt.Fprintf(sio.out, "kernel    %s (%s)\n", r.KernelVersion, r.ModuleTree)
	if modulesOnly != "" {
		printModules(sio.out, r)
		fmt.Fprintf(sio.out, "wrote     %s (use with u-root: -files %s:lib/modules)\n",
			filepath.Join(modulesOnly, "lib/modules", r.KernelVersion), filepath.Join(modulesOnly, "lib/modules"))
		return nil
	}
	if opts.BaseOnly {
		fmt.Fprintln(sio.out, "binary    none: a base archive (u-root: -base "+out+" -initcmd=nbdroot ... ./cmd/nbdroot)")
	} else {
		fmt.Fprintf(sio.out, "binary    %s (%s) as /init\n", r.Binary, sizeString(r.BinarySize))
	}
	printModules(sio.out, r)
	if r.Config != "" {
		line := fmt.Sprintf("config    %s as %s", r.Config, initramfs.ConfigPath)
		if len(r.TLSFiles) > 0 {
			line += "; TLS files " + strings.Join(r.TLSFiles, ", ")
		}
		fmt.Fprintln(sio.out, line)
	}
	if len(r.Files) > 0 {
		fmt.Fprintf(sio.out, "files     %d: %s\n", len(r.Files), strings.Join(r.Files, ", "))
	}
	if r.Shell != "" {
		fmt.Fprintf(sio.out, "shell     %s (%s) as %s; %d links\n", r.Shell, sizeString(r.ShellSize), r.ShellPath, len(r.Links))
	}
	how := string(r.Compression)
	if r.Compression != initramfs.None {
		how += " of " + sizeString(r.ArchiveSize)
	}
	fmt.Fprintf(sio.out, "wrote     %s: %s (%s, %d entries)\n", out, sizeString(r.Size), how, r.Entries)
	return nil
}

// writeImage writes the archive to a temporary file next to out and renames
// it into place, so a failure never leaves a truncated image behind.
func writeImage(ctx context.Context, out string, opts initramfs.Options) (*initramfs.Report, error) {
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", out, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // fails harmlessly after the rename
	r, err := initramfs.Write(ctx, f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing %s: %w", out, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("writing %s: %w", out, err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return nil, fmt.Errorf("writing %s: %w", out, err)
	}
	return r, nil
}

// printModules prints the modules line of the summary.
func printModules(w io.Writer, r *initramfs.Report) {
	line := fmt.Sprintf("modules   %d modules (%d KiB)", len(r.Modules), (r.ModuleBytes+1023)/1024)
	if len(r.Builtin) > 0 {
		line += "; built in: " + strings.Join(r.Builtin, ", ")
	}
	if len(r.Missing) > 0 {
		line += "; not available: " + strings.Join(r.Missing, ", ")
	}
	fmt.Fprintln(w, line)
}

// sizeString formats a byte count for people.
func sizeString(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
