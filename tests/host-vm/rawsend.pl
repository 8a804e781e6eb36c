#!/usr/bin/perl
# A raw Ethernet frame sender for the bridge filter tests (the VM has perl
# from its minimal base, and no packet tool). Run in a segment's network
# namespace, it sends what a customer with CAP_NET_RAW could (a --net host
# container has it by default):
#
#   rawsend.pl IFACE arp OP SRC-MAC SENDER-MAC SENDER-IP TARGET-MAC TARGET-IP DST-MAC
#   rawsend.pl IFACE udp SRC-MAC DST-MAC SRC-IP DST-IP DST-PORT PAYLOAD
#
# OP is 1 (request) or 2 (reply). Prints "sent" once the kernel took the frame.
use strict;
use warnings;
use Socket;

my ($iface, $kind, @args) = @ARGV;
die "usage: rawsend.pl IFACE arp|udp ...\n" unless $iface && $kind;

sub mac { my $m = shift; $m =~ s/://g; pack("H12", $m) }
sub ip4 { inet_aton(shift) // die "not an IPv4 address\n" }

# The ones' complement sum of 16-bit words (RFC 1071).
sub checksum {
    my $data = shift;
    $data .= "\0" if length($data) % 2;
    my $sum = 0;
    $sum += $_ for unpack("n*", $data);
    $sum = ($sum & 0xffff) + ($sum >> 16) while $sum >> 16;
    return ~$sum & 0xffff;
}

my $frame;
if ($kind eq "arp") {
    my ($op, $src, $sha, $spa, $tha, $tpa, $dst) = @args;
    $frame = mac($dst) . mac($src) . pack("n", 0x0806)
      . pack("nnCCn", 1, 0x0800, 6, 4, $op)
      . mac($sha) . ip4($spa) . mac($tha) . ip4($tpa);
} elsif ($kind eq "udp") {
    my ($src, $dst, $sip, $dip, $port, $payload) = @args;
    my $udp = pack("nnnn", 40000, $port, 8 + length($payload), 0) . $payload;
    my $hdr = pack("CCnnnCCn", 0x45, 0, 20 + length($udp), 0, 0x4000, 64, 17, 0)
      . ip4($sip) . ip4($dip);
    substr($hdr, 10, 2) = pack("n", checksum($hdr));
    $frame = mac($dst) . mac($src) . pack("n", 0x0800) . $hdr . $udp;
} else {
    die "rawsend.pl: unknown frame kind $kind\n";
}
$frame .= "\0" x (60 - length($frame)) if length($frame) < 60;

# AF_PACKET (17), SOCK_RAW (3), protocol 0: send only.
socket(my $s, 17, 3, 0) or die "socket(AF_PACKET): $!\n";
# The interface's index from the kernel (SIOCGIFINDEX): /sys may be another
# namespace's (nsenter --net keeps the caller's mounts).
my $ifr = pack("a16 i x20", $iface);
ioctl($s, 0x8933, $ifr) or die "no interface $iface: $!\n";
my $index = (unpack("a16 i", $ifr))[1];
# struct sockaddr_ll: family, protocol, ifindex, hatype, pkttype, halen, addr.
my $to = pack("S n i S C C a8", 17, 0, $index, 0, 0, 6, substr($frame, 0, 6));
defined(send($s, $frame, 0, $to)) or die "send: $!\n";
print "sent\n";
