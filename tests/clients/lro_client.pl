#!/usr/bin/env perl
# A client of the seed LRO (Azure Maps Creator tilesets) in Perl with core modules only (HTTP::Tiny,
# JSON::PP), written as a user outside this project would: POST /tilesets -> 202 + Location; poll
# honouring retry-after-ms / x-ms-retry-after-ms / Retry-After (seconds); retry 429/5xx and resets (HTTP::Tiny
# reports a reset as status 599); stop at Succeeded/Failed; GET the resourceLocation. --naive ignores delays.
# Usage: perl lro_client.pl BASE_URL DATASET_ID [--naive]; prints one line: the outcome.
# HTTPS (needs IO::Socket::SSL, not a core module): LRO_CA_FILE=$(replay-proxy ca); forward proxy: LRO_PROXY=host:port.
use strict;
use warnings;
use HTTP::Tiny;
use JSON::PP qw(decode_json);
use Time::HiRes qw(sleep);

my ($base, $dataset, $flag) = @ARGV;
my $naive = defined $flag && $flag eq '--naive';
my %tls = $ENV{LRO_CA_FILE} ? (verify_SSL => 1, SSL_options => {SSL_ca_file => $ENV{LRO_CA_FILE}}) : ();
my %proxy = $ENV{LRO_PROXY} ? (proxy => "http://$ENV{LRO_PROXY}", https_proxy => "http://$ENV{LRO_PROXY}") : ();
my $http = HTTP::Tiny->new(timeout => 10, keep_alive => 1, %tls, %proxy);
my $requests = 0;
my $last_delay = 0.05;

sub wait_for { sleep($_[0]) unless $naive }

sub delay_of {
    my ($headers) = @_;    # HTTP::Tiny lower-cases header names
    for my $name ('retry-after-ms', 'x-ms-retry-after-ms') {
        my $v = $headers->{$name};
        return $v / 1000 if defined $v && $v =~ /^\s*\d+(?:\.\d+)?\s*$/;
    }
    my $ra = $headers->{'retry-after'};
    return $ra if defined $ra && $ra =~ /^\s*\d+\s*$/;
    return undef;
}

sub send_request {    # one logical request: retried after a reset, a 429 or a 5xx
    my ($method, $url) = @_;
    for my $attempt (1 .. 5) {
        die "gave up after 50 requests\n" if ++$requests > 50;
        my $res = $http->request($method, $url);
        if ($res->{status} == 599) {    # HTTP::Tiny's "no answer": connection refused, reset, timeout
            die "$method $url: $res->{content}" if $attempt == 5;
            wait_for($last_delay);
            next;
        }
        my $delay = delay_of($res->{headers});
        $last_delay = $delay if defined $delay;
        if (($res->{status} == 429 || $res->{status} >= 500) && $attempt < 5) {
            wait_for($delay // 1);
            next;
        }
        return ($res, $delay);
    }
}

my ($start, $start_delay) = send_request('POST', "$base/tilesets?api-version=2.0&datasetId=$dataset");
die "start: HTTP $start->{status}: $start->{content}\n" unless $start->{status} == 202;
my $location = $start->{headers}{location};
wait_for($start_delay // 0);
while (1) {
    my ($poll, $delay) = send_request('GET', $location);
    die "poll: HTTP $poll->{status}: $poll->{content}\n" if $poll->{status} >= 400;
    my $op = decode_json($poll->{content});
    if ($op->{status} eq 'Failed') {
        print "Failed $op->{error}{code} ($requests requests)\n";
        exit 0;
    }
    if ($op->{status} eq 'Succeeded') {
        my $id = '-';
        if ($op->{resourceLocation}) {
            my ($got) = send_request('GET', $op->{resourceLocation});
            $id = decode_json($got->{content})->{tilesetId};
        }
        print "Succeeded $id ($requests requests)\n";
        exit 0;
    }
    wait_for($delay // 1);
}
