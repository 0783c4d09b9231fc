package boot

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/nbdroot/nbdroot/config"
	"github.com/nbdroot/nbdroot/keeper"
	"github.com/nbdroot/nbdroot/network"
)

func TestApplyLease(t *testing.T) {
	dhcpServer := netip.MustParseAddr("10.0.2.2")
	for _, tc := range []struct {
		name    string
		cmdline string
		lease   network.Lease
		want    []config.Endpoint
		index   int
		wantErr string
	}{
		{name: "root-path", cmdline: "nbdroot=dhcp", lease: network.Lease{DHCPServer: dhcpServer, RootPath: "10.0.0.7:2000/root"},
			want: []config.Endpoint{{Host: "10.0.0.7", Port: 2000, Export: "root"}}, index: config.AutoIndex},
		{name: "root-path naming the DHCP server and a device", cmdline: "nbdroot=dhcp", lease: network.Lease{DHCPServer: dhcpServer, RootPath: "dhcp,root,nbd3"},
			want: []config.Endpoint{{Host: "10.0.2.2", Port: config.DefaultPort, Export: "root"}}, index: 3},
		{name: "host is the DHCP server", cmdline: "nbdroot=dhcp:10809/root", lease: network.Lease{DHCPServer: dhcpServer},
			want: []config.Endpoint{{Host: "10.0.2.2", Port: 10809, Export: "root"}}, index: config.AutoIndex},
		{name: "no root-path", cmdline: "nbdroot=dhcp", lease: network.Lease{DHCPServer: dhcpServer},
			wantErr: "nbdroot=dhcp, but the DHCP server sent no root-path (option 17)"},
		{name: "bad root-path", cmdline: "nbdroot=dhcp", lease: network.Lease{DHCPServer: dhcpServer, RootPath: "srv:99999/x"},
			wantErr: `dhcp root-path: "srv:99999/x": port 99999 is out of range 1-65535`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := config.Resolve(config.Sources{Cmdline: tc.cmdline})
			if err != nil {
				t.Fatal(err)
			}
			spec := res.Spec
			err = applyLease(&spec, &tc.lease)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("got %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(spec.Server.Endpoints, tc.want) || spec.Device.Index != tc.index {
				t.Fatalf("endpoints %+v index %d, want %+v index %d", spec.Server.Endpoints, spec.Device.Index, tc.want, tc.index)
			}
		})
	}
}

func TestInitArgs(t *testing.T) {
	kernel := []string{"single", "x"}
	res := &config.Resolved{Spec: config.Spec{Root: config.Root{InitArgs: []string{"x"}}},
		Origin: map[string]string{"root.init_args": "cmdline: --"}}
	if got := initArgs(res, Options{InitArgs: kernel}); !reflect.DeepEqual(got, kernel) {
		t.Errorf("from the kernel's command line: %q, want the kernel's argv %q", got, kernel)
	}
	if got := initArgs(res, Options{InitArgs: kernel, Cmdline: "nbdroot=a/b -- x"}); !reflect.DeepEqual(got, []string{"x"}) {
		t.Errorf("with a replaced command line: %q, want the spec's", got)
	}
	res.ConfigFile, res.Origin["root.init_args"] = "/etc/nbdroot.toml", "/etc/nbdroot.toml:4"
	if got := initArgs(res, Options{InitArgs: kernel}); !reflect.DeepEqual(got, []string{"x"}) {
		t.Errorf("from the TOML file: %q, want the spec's", got)
	}
}

// TestStepErrorNamesTheStepOnce: the final messages name the step once,
// whichever layer failed.
func TestStepErrorNamesTheStepOnce(t *testing.T) {
	refused := errors.New(`every server refused: 10.0.2.2:10809/nosuch: negotiate: NBD_OPT_GO "nosuch": server refused: NBD_REP_ERR_UNKNOWN`)
	for _, tc := range []struct {
		err  error
		want string
	}{
		{keeperStepError(&keeper.Error{Op: "connect", Err: refused}),
			`connect: every server refused: 10.0.2.2:10809/nosuch: negotiate: NBD_OPT_GO "nosuch": server refused: NBD_REP_ERR_UNKNOWN`},
		{keeperStepError(fmt.Errorf("start: %w", &keeper.Error{Op: "keeper", Err: errors.New("exited without reporting (exit status 1)")})),
			"keeper: exited without reporting (exit status 1)"},
		{keeperStepError(errors.New("no nbd devices (is the nbd module loaded?)")), "attach: no nbd devices (is the nbd module loaded?)"},
		{&StepError{Step: "mount", Err: errors.New("/dev/nbd0p1 did not appear within 5s")}, "mount: /dev/nbd0p1 did not appear within 5s"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("got %q\nwant %q", got, tc.want)
		}
	}
}

func TestRootModules(t *testing.T) {
	for _, tc := range []struct {
		root config.Root
		want []string
	}{
		{config.Root{}, []string{"ext4"}},
		{config.Root{FSType: "xfs"}, []string{"xfs"}},
		{config.Root{FSType: "squashfs", Overlay: config.OverlayTmpfs}, []string{"squashfs", "overlay"}},
		{config.Root{Overlay: config.OverlayTmpfs}, []string{"ext4", "overlay"}},
	} {
		if got := rootModules(tc.root); !slices.Equal(got, tc.want) {
			t.Errorf("rootModules(%+v) = %q, want %q", tc.root, got, tc.want)
		}
	}
}
