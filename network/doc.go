// Package network owns the root's network, from the first link brought up
// in the initramfs to the last renewal before power-off.
//
// In PID 1, Up brings the links up (waiting for carrier, not operstate),
// takes a DHCPv4 lease or applies the static address of ip=, and returns a
// Lease: everything that was configured and everything needed to keep it
// (server identifier, lease times, client identifier and hardware address,
// root-path). The Lease is JSON, so PID 1 can hand it to the keeper process.
// Handoff then writes, into /run before switch_root, the files that make
// the root's own network stack leave the root link alone.
//
// In the keeper, Keep runs a Guard and a Renewer for as long as the system
// runs. The Renewer keeps the DHCP lease (RENEW at T1, unicast to the
// server; REBIND at T2, broadcast; a new DISCOVER after a NAK or expiry),
// always with the hardware address and client identifier of the first
// lease. The Guard watches rtnetlink and restores the link's up state, its
// address and its default route the moment anything takes them away.
//
// # DHCP timing
//
// The packet socket is open before the first DISCOVER goes out, and the
// first offer that arrives is taken. DISCOVER is sent again after 0.25 s,
// then after twice as long each time up to 4 s (each wait stretched by up
// to a quarter at random), and the lease is due within the DHCP timeout
// counted from carrier. On a bridged lab network with dnsmasq the network
// step took 3 s because of the server, not the client: dnsmasq pings an
// address before offering it to a client it has no lease for and waits 3 s
// for an answer, answering nothing meanwhile. A lab that wants quick boots
// sets dnsmasq's no-ping (or gives each machine a dhcp-host address); the
// offer then comes within milliseconds and is taken.
//
// Only the DHCP options that matter to the root are asked for and applied:
// address and mask, router or classless static routes (option 121, which
// replaces the router option), DNS servers and search domain (written to
// resolv.conf), hostname (unless ip= or the TOML file names one), MTU
// (option 26, set on the link before the first connection), lease times,
// and the root-path (option 17).
//
// # How the root's address is installed
//
// The address is installed with infinite lifetimes, so the kernel never
// removes it on its own. A DHCP address with finite lifetimes dies when its
// valid lifetime runs out, and with it the root disk's connection, if the
// renewer missed a renewal for any reason (a server down longer than the
// lease, a keeper stopped by the init system for a while). The lease's
// clock is the Renewer's: it renews from T1 on and re-acquires on expiry,
// counting on the monotonic clock. When the root's own DHCP client
// installs the same address with a lifetime (systemd-networkd does), the
// Guard makes it permanent again. The Guard restores the default route only
// when there is no IPv4 default route at all: one the root's stack set up
// is its choice.
//
// # What each network stack of the root sees
//
//   - systemd-networkd: a drop-in NAME.network.d/50-nbdroot-root.conf under
//     /run/systemd/network/ with KeepConfiguration=yes, for every .network
//     file of the root whose [Match] could select the root NIC. networkd
//     then neither drops the address and route it finds at start nor
//     removes them when it stops or restarts; its own DHCP client still
//     runs.
//   - NetworkManager: the root NIC is unmanaged
//     (/run/NetworkManager/conf.d/90-nbdroot-root.conf appends it to
//     [keyfile] unmanaged-devices, by interface name and MAC address).
//     keep-configuration only protects the link at NetworkManager's start;
//     a managed device is still deactivated (addresses flushed) when its
//     connection fails or is brought down, and a managed device runs a
//     second DHCP client with NetworkManager's own client identifier, which
//     may get a second address and replace the default route while the
//     root's I/O flows. Unmanaged, the link has one owner: the keeper,
//     which renews the lease itself. The cost: NetworkManager shows the
//     NIC as unmanaged and takes no DNS servers from it.
//   - ifupdown: nothing in /run stops ifdown, whose dhclient -r releases
//     the lease and flushes the address, and which sets the link down. The
//     Guard restores all three at once and has the Renewer request the
//     lease again, since the release freed it at the server.
package network
