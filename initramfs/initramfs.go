// Package initramfs writes the initramfs nbdroot boots from: a newc cpio
// archive, optionally compressed, holding nbdroot itself as /init, the
// directories and device nodes PID 1 needs before it mounts anything, the
// kernel modules of config.BaseModules and any others asked for (with their
// dependencies from modules.dep), the spec as /etc/nbdroot.toml and the TLS
// files it names, and optionally a rescue shell.
//
// The same plan, without /init, is a base archive for other initramfs
// builders (u-root's -base), and its module tree alone can be written to a
// directory (WriteModuleTree): the module closure is decided here only.
//
// Archives are reproducible: the same inputs give the same bytes. Entries
// are sorted by path, every timestamp is 0, every owner is root, inode
// numbers count up in path order, and compressed streams carry no name or
// time. Device nodes are written as archive records, so no privileges are
// needed.
package initramfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/kmod"
)

// ConfigPath is where the spec file goes in the image; boot reads it there.
const ConfigPath = "/etc/nbdroot.toml"

// File is an extra file to put in the image.
type File struct {
	// Src is the file on the host.
	Src string
	// Dst is the absolute path in the image.
	Dst string
}

// Options says what goes into an image.
type Options struct {
	// Binary is the nbdroot executable installed as /init. It must be a
	// static ELF executable: a dynamic one cannot run from an initramfs.
	Binary string
	// KernelVersion names the module tree; empty means the newest one in
	// ModulesDir (see NewestKernel).
	KernelVersion string
	// ModulesDir holds one module tree per kernel version; empty means
	// DefaultModulesDir.
	ModulesDir string
	// BaseModules are carried when the kernel has them and skipped
	// otherwise. Nil means config.BaseModules(); an empty non-nil slice
	// means none.
	BaseModules []string
	// Modules are carried too; each must be a module or built in.
	Modules []string
	// ConfigFile, if set, is installed as ConfigPath, with the TLS files
	// it names at the same paths in the image (keys mode 0600), and the
	// modules its boot.modules names added to Modules.
	ConfigFile string
	// Files are extra files, copied with their permission bits.
	Files []File
	// Compression is how the archive is compressed; empty means Gzip.
	Compression Compression
	// Shell, if set, is a static shell for the failure policy's rescue
	// shell (see PlanShell for where it goes). With a shell, /bin/nbdroot
	// links to /init so that nbdroot's subcommands are on its PATH.
	Shell string
	// BaseOnly leaves out /init (Binary is then ignored and may be empty):
	// the archive is a base for a builder that brings nbdroot as its own
	// init, such as u-root's -base FILE with -initcmd=nbdroot.
	BaseOnly bool
}

// Report says what went into an image.
type Report struct {
	// KernelVersion is the kernel; ModuleTree is its module directory on
	// the host (MODULESDIR/KVER).
	KernelVersion string
	ModuleTree    string
	// Binary is the host path of /init; BinarySize its size in bytes.
	Binary     string
	BinarySize int64
	// Modules are the canonical names of the module files included
	// (dependencies too), sorted; ModuleBytes is their total size.
	Modules     []string
	ModuleBytes int64
	// Builtin are requested modules that are built into the kernel.
	Builtin []string
	// Missing are base modules that the kernel does not have.
	Missing []string
	// Config is the host path of the spec file, if any; TLSFiles are the
	// image paths of the certificate and key files it names.
	Config   string
	TLSFiles []string
	// Files are the image paths of the extra files.
	Files []string
	// Shell is the host path of the rescue shell, ShellPath its path in
	// the image and ShellSize its size; Links are the symbolic links
	// made for it and for nbdroot, as "PATH -> TARGET".
	Shell     string
	ShellPath string
	ShellSize int64
	Links     []string
	// Entries is the number of archive records (without the trailer).
	Entries int
	// Compression is what the archive was compressed with.
	Compression Compression
	// ArchiveSize is the uncompressed cpio size; Size is the number of
	// bytes written.
	ArchiveSize int64
	Size        int64
}

// entry is one archive record before it is written.
type entry struct {
	name   string // clean, relative to the image root ("etc/nbdroot.toml")
	mode   uint64 // file type and permission bits (unix.S_IF*)
	src    string // host file with the contents, or
	data   []byte // the contents
	size   int64
	rmajor uint64 // device number of a device node
	rminor uint64
	origin string // what asked for it, for conflict errors
}

func (e *entry) isDir() bool { return e.mode&unix.S_IFMT == unix.S_IFDIR }

// symlink plans a symbolic link at the image path link pointing to target.
func (im *image) symlink(link, target, origin string) error {
	name, err := imagePath(link)
	if err != nil {
		return fmt.Errorf("%s: %w", origin, err)
	}
	e := &entry{name: name, mode: unix.S_IFLNK | 0o777, data: []byte(target), size: int64(len(target)), origin: origin}
	if err := im.add(e); err != nil {
		return err
	}
	im.report.Links = append(im.report.Links, "/"+name+" -> "+target)
	return nil
}

// image is the planned contents of an archive.
type image struct {
	entries map[string]*entry
	report  Report
}

// add plans one entry. A directory may be planned twice with the same mode;
// anything else at a taken path is a conflict.
func (im *image) add(e *entry) error {
	if old, ok := im.entries[e.name]; ok {
		if old.isDir() && e.isDir() {
			return nil
		}
		return fmt.Errorf("/%s is wanted twice in the image: by %s and by %s", e.name, old.origin, e.origin)
	}
	im.entries[e.name] = e
	return nil
}

// addDirs plans every missing parent directory of every entry, mode 0755.
func (im *image) addDirs() error {
	for _, e := range slices.Collect(maps.Values(im.entries)) {
		for d := path.Dir(e.name); d != "."; d = path.Dir(d) {
			if old, ok := im.entries[d]; ok {
				if !old.isDir() {
					return fmt.Errorf("/%s is wanted as a file by %s and as the directory of /%s by %s", d, old.origin, e.name, e.origin)
				}
				continue
			}
			im.entries[d] = &entry{name: d, mode: unix.S_IFDIR | 0o755, origin: "parent of /" + e.name}
		}
	}
	return nil
}

// sorted returns the entries in path order. A directory sorts before
// everything inside it (a prefix sorts first), as the kernel's unpacker
// needs.
func (im *image) sorted() []*entry {
	es := slices.Collect(maps.Values(im.entries))
	slices.SortFunc(es, func(a, b *entry) int { return strings.Compare(a.name, b.name) })
	return es
}

// hostFile plans a regular file copied from the host.
func (im *image) hostFile(src, dst string, perm fs.FileMode, origin string) (*entry, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", origin, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %s is not a regular file", origin, src)
	}
	if fi.Size() > math.MaxUint32 {
		return nil, fmt.Errorf("%s: %s is larger than the 4 GiB a newc archive can hold", origin, src)
	}
	if perm == 0 {
		perm = fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	}
	name, err := imagePath(dst)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", origin, err)
	}
	e := &entry{name: name, mode: unix.S_IFREG | unixPerm(perm), src: src, size: fi.Size(), origin: origin}
	return e, im.add(e)
}

// module plans module m of the host's tree dir at the same path under the
// image's treeDir. A compressed module goes in decompressed, as
// initramfs-tools stores it when it compresses the image: the archive's
// compression covers it anyway, the kernel unpacks once instead of twice,
// and an older kernel, which cannot decompress modules itself (before
// Linux 6.4), needs no decompressor in the image.
func (im *image) module(ctx context.Context, dir, treeDir string, m Module) (*entry, error) {
	src := filepath.Join(dir, filepath.FromSlash(m.Path))
	dst, compressed := kmod.Uncompressed(m.Path)
	if !compressed {
		return im.hostFile(src, path.Join(treeDir, dst), 0o644, "module "+m.Name)
	}
	data, err := kmod.ReadModule(ctx, src)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", m.Name, err)
	}
	name, _ := imagePath(path.Join(treeDir, dst))
	e := &entry{name: name, mode: unix.S_IFREG | 0o644, data: data, size: int64(len(data)), origin: "module " + m.Name}
	return e, im.add(e)
}

// unixPerm converts Go permission bits to cpio's.
func unixPerm(m fs.FileMode) uint64 {
	p := uint64(m.Perm())
	for goBit, cpioBit := range map[fs.FileMode]uint64{fs.ModeSetuid: unix.S_ISUID, fs.ModeSetgid: unix.S_ISGID, fs.ModeSticky: unix.S_ISVTX} {
		if m&goBit != 0 {
			p |= cpioBit
		}
	}
	return p
}

// imagePath turns an absolute image path into an entry name.
func imagePath(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("image path %q is not absolute", p)
	}
	name := strings.TrimPrefix(path.Clean(p), "/")
	if name == "" {
		return "", fmt.Errorf("image path %q names the root", p)
	}
	return name, nil
}

// standardEntries are the directories PID 1 mounts on or writes to before
// the root is attached, then the device nodes the kernel and PID 1 need
// before devtmpfs is mounted: the kernel opens /dev/console for /init's stdio.
func standardEntries() []*entry {
	dirs := []struct {
		name string
		perm uint64
	}{
		{"dev", 0o755}, {"etc", 0o755}, {"proc", 0o555}, {"root", 0o700},
		{"run", 0o755}, {"sys", 0o555}, {"tmp", 0o1777},
	}
	var es []*entry
	for _, d := range dirs {
		es = append(es, &entry{name: d.name, mode: unix.S_IFDIR | d.perm, origin: "the standard directories"})
	}
	return append(es,
		&entry{name: "dev/console", mode: unix.S_IFCHR | 0o600, rmajor: 5, rminor: 1, origin: "the standard device nodes"},
		&entry{name: "dev/null", mode: unix.S_IFCHR | 0o666, rmajor: 1, rminor: 3, origin: "the standard device nodes"})
}

// plan decides what goes into the image. With modulesOnly it plans the
// module tree alone.
func plan(ctx context.Context, opts Options, modulesOnly bool) (*image, error) {
	im := &image{entries: map[string]*entry{}}
	r := &im.report

	kver := opts.KernelVersion
	if kver == "" {
		v, err := NewestKernel(opts.ModulesDir)
		if err != nil {
			return nil, err
		}
		kver = v
	}
	base := opts.BaseModules
	if base == nil {
		base = config.BaseModules()
	}
	required := slices.Clone(opts.Modules)

	var spec *config.Spec
	if opts.ConfigFile != "" {
		var err error
		if spec, err = loadSpec(opts.ConfigFile); err != nil {
			return nil, err
		}
		required = append(required, spec.Boot.Modules...)
	}

	closure, err := ModuleClosure(opts.ModulesDir, kver, required, base)
	if err != nil {
		return nil, err
	}
	r.KernelVersion, r.ModuleTree = kver, closure.Dir
	r.Modules, r.Builtin, r.Missing = closure.Names(), closure.Builtin, closure.Missing
	treeDir := path.Join("/lib/modules", kver)
	for _, m := range closure.Modules {
		e, err := im.module(ctx, closure.Dir, treeDir, m)
		if err != nil {
			return nil, err
		}
		r.ModuleBytes += e.size
	}
	meta, err := closure.metadata()
	if err != nil {
		return nil, err
	}
	for _, f := range meta {
		name, _ := imagePath(path.Join(treeDir, f.name))
		if err := im.add(&entry{name: name, mode: unix.S_IFREG | 0o644, data: f.data, size: int64(len(f.data)), origin: "the module tree"}); err != nil {
			return nil, err
		}
	}
	if modulesOnly {
		return im, im.addDirs()
	}

	for _, e := range standardEntries() {
		if err := im.add(e); err != nil {
			return nil, err
		}
	}

	if !opts.BaseOnly {
		if opts.Binary == "" {
			return nil, errors.New("no nbdroot binary to install as /init")
		}
		e, err := im.hostFile(opts.Binary, "/init", 0o755, "the nbdroot binary")
		if err != nil {
			return nil, err
		}
		if err := checkStatic("nbdroot binary", opts.Binary, "build it with CGO_ENABLED=0"); err != nil {
			return nil, err
		}
		r.Binary, r.BinarySize = opts.Binary, e.size
	}

	if spec != nil {
		if _, err := im.hostFile(opts.ConfigFile, ConfigPath, 0o644, "the config file"); err != nil {
			return nil, err
		}
		r.Config = opts.ConfigFile
		tls := []struct {
			what, file string
			perm       fs.FileMode
		}{
			{"tls.ca", spec.TLS.CAFile, 0o644},
			{"tls.cert", spec.TLS.CertFile, 0o644},
			{"tls.key", spec.TLS.KeyFile, 0o600},
		}
		for _, t := range tls {
			if t.file == "" {
				continue
			}
			if !filepath.IsAbs(t.file) {
				return nil, fmt.Errorf("%s: %s %q must be an absolute path, so it names the same file on this host and in the image", opts.ConfigFile, t.what, t.file)
			}
			e, err := im.hostFile(t.file, filepath.ToSlash(t.file), t.perm, opts.ConfigFile+": "+t.what)
			if err != nil {
				return nil, err
			}
			r.TLSFiles = append(r.TLSFiles, "/"+e.name)
		}
	}

	for _, f := range opts.Files {
		e, err := im.hostFile(f.Src, f.Dst, 0, "file "+f.Src)
		if err != nil {
			return nil, err
		}
		r.Files = append(r.Files, "/"+e.name)
	}

	if opts.Shell != "" {
		if err := im.addShell(opts.Shell, !opts.BaseOnly); err != nil {
			return nil, err
		}
	}
	return im, im.addDirs()
}

// loadSpec resolves the spec file that goes into the image, so that a
// broken spec fails now rather than at boot, and so that the files it names
// are known. The check is partial: the kernel command line may still name
// the server. Spec errors stay *config.Error (they name the file and line).
func loadSpec(path string) (*config.Spec, error) {
	res, err := config.Resolve(config.Sources{ConfigPath: path, ReadFile: os.ReadFile, Partial: true})
	if err != nil {
		return nil, fmt.Errorf("checking the config file: %w", err)
	}
	return &res.Spec, nil
}

// checkStatic makes sure the binary (what names it in errors) can run in
// an initramfs that has no shared libraries: an ELF executable without a
// program interpreter. hint says how to get a static build.
func checkStatic(what, bin, hint string) error {
	f, err := os.Open(bin)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	interp, err := elfInterpreter(f)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, bin, err)
	}
	if interp != "" {
		return fmt.Errorf("%s %s is dynamically linked (interpreter %s), which an initramfs cannot run; %s", what, bin, interp, hint)
	}
	return nil
}

// Write writes an initramfs archive to w and reports what went in. Nothing
// is written when planning fails (a missing module, an unreadable file).
func Write(ctx context.Context, w io.Writer, opts Options) (*Report, error) {
	comp := opts.Compression
	if comp == "" {
		comp = Gzip
	}
	if _, err := ParseCompression(string(comp)); err != nil {
		return nil, err
	}
	im, err := plan(ctx, opts, false)
	if err != nil {
		return nil, err
	}
	out := &countingWriter{w: w}
	cw, err := compressor(ctx, out, comp)
	if err != nil {
		return nil, err
	}
	archive := &countingWriter{w: cw}
	err = writeArchive(ctx, archive, im.sorted())
	// Closed on failure too: a compressing program ends with its input.
	if cerr := cw.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("compressing the archive: %w", cerr)
	}
	if err != nil {
		return nil, err
	}
	r := im.report
	r.Entries, r.Compression, r.ArchiveSize, r.Size = len(im.entries), comp, archive.n, out.n
	return &r, nil
}

// writeArchive writes the entries and the trailer as newc records.
func writeArchive(ctx context.Context, w io.Writer, entries []*entry) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	nw := &newcWriter{w: bw}
	for i, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := writeEntry(nw, e, uint64(i+1)); err != nil {
			return err
		}
	}
	if err := nw.header(newcRecord{name: newcTrailer}); err != nil {
		return fmt.Errorf("writing the archive trailer: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing the archive: %w", err)
	}
	return nil
}

// writeEntry writes one record with inode number ino.
func writeEntry(nw *newcWriter, e *entry, ino uint64) error {
	r := newcRecord{name: e.name, ino: ino, mode: e.mode, nlink: 1, rmajor: e.rmajor, rminor: e.rminor}
	if e.isDir() {
		r.nlink = 2
	}
	var contents io.Reader
	switch {
	case e.src != "":
		f, err := os.Open(e.src)
		if err != nil {
			return fmt.Errorf("%s: %w", e.origin, err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("%s: %w", e.origin, err)
		}
		if fi.Size() != e.size {
			return fmt.Errorf("%s: %s changed size while the image was written", e.origin, e.src)
		}
		contents, r.size = f, uint64(e.size)
	case e.data != nil:
		contents, r.size = bytes.NewReader(e.data), uint64(len(e.data))
	}
	err := nw.header(r)
	if err == nil && contents != nil {
		err = nw.data(contents, r.size)
	}
	if err != nil {
		return fmt.Errorf("writing /%s to the archive: %w", e.name, err)
	}
	return nil
}

// WriteModuleTree writes just the module tree of the image opts describe
// into dir, as dir/lib/modules/KVER/..., for other initramfs builders
// (u-root's -files DIR/lib/modules:lib/modules or a base archive). Binary,
// ConfigFile (except its boot.modules), Files and Compression are ignored.
// Existing files are overwritten.
func WriteModuleTree(ctx context.Context, dir string, opts Options) (*Report, error) {
	im, err := plan(ctx, opts, true)
	if err != nil {
		return nil, err
	}
	for _, e := range im.sorted() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := materialize(dir, e); err != nil {
			return nil, err
		}
	}
	r := im.report
	r.Entries = len(im.entries)
	return &r, nil
}

// materialize creates one planned entry under dir.
func materialize(dir string, e *entry) error {
	dst := filepath.Join(dir, filepath.FromSlash(e.name))
	perm := fs.FileMode(e.mode & 0o777)
	switch {
	case e.isDir():
		if err := os.MkdirAll(dst, perm); err != nil {
			return fmt.Errorf("creating %s: %w", dst, err)
		}
		return nil
	case e.mode&unix.S_IFMT != unix.S_IFREG:
		return fmt.Errorf("/%s: only directories and regular files can be written to a directory", e.name)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("creating %s: %w", dst, err)
	}
	defer out.Close() // for the early returns; the Close below reports
	src := io.Reader(bytes.NewReader(e.data))
	if e.src != "" {
		in, err := os.Open(e.src)
		if err != nil {
			return fmt.Errorf("%s: %w", e.origin, err)
		}
		defer in.Close()
		src = in
	}
	if _, err := io.Copy(out, src); err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}
	return nil
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
