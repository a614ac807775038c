/*
 * underlay_tx: what would the underlay send path gain from AF_XDP (copy
 * mode) or MSG_ZEROCOPY over what vxmeshd does now (UDP sendmsg with
 * UDP_SEGMENT, 20 x 1450-byte datagrams per call)?
 *
 * Every sending mode puts the same datagrams on the wire (1450-byte UDP
 * payloads, 1492-byte Ethernet frames) for SECS seconds and prints one
 * JSON line with what it sent, its own CPU and the whole machine's busy
 * CPU over the run, so that CPU per datagram can be compared. `recv`
 * counts what arrives on the other end. underlay_tx.sh runs all of it in
 * two throw-away network namespaces.
 *
 *   underlay_tx recv PORT SECS
 *   underlay_tx gso|zerocopy|single DST_IP PORT SECS
 *   underlay_tx xdp IFNAME SRC_MAC DST_MAC SRC_IP DST_IP PORT SECS
 *
 * No libbpf/libxdp: AF_XDP TX needs no XDP program, only a UMEM and rings.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/errqueue.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif
#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif

#define PAYLOAD 1450 /* vxmeshd's underlay datagram payload */
#define BATCH 20     /* datagrams per vxmeshd sendmsg */
#define FRAME_LEN (14 + 20 + 8 + PAYLOAD)
#define ZC_MAX_OUTSTANDING 64
#define XSK_FRAMES 4096
#define XSK_FRAME_SIZE 2048
#define XSK_TX_SIZE 2048
#define XSK_CQ_SIZE 4096 /* >= frames, so completions never overflow */
#define XSK_FQ_SIZE 64   /* bind insists on a fill ring even for TX only */
#define XSK_BURST 64
#define RECV_BUF (512 * 1024) /* a GRO'd read can reach 64 KiB; be generous */

/* ---------- errors, time and CPU accounting ---------- */

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("underlay_tx: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static void die_errno(const char *what)
{
	die("%s: %s (errno %d)", what, strerror(errno), errno);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double self_cpu(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* Busy seconds of all CPUs together; softirq work done for the other
 * namespace (veth NAPI, the receiver's stack) only shows up here. */
static double machine_busy(void)
{
	unsigned long long v[8] = { 0 }, busy;
	FILE *f = fopen("/proc/stat", "r");

	if (!f)
		die_errno("open /proc/stat");
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
		   &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 8)
		die("cannot parse /proc/stat");
	fclose(f);
	/* user nice system [idle iowait] irq softirq steal; guest is in user */
	busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
	return (double)busy / sysconf(_SC_CLK_TCK);
}

struct run {
	const char *mode;
	double t0, cpu0, busy0, end;
	unsigned long long sent, calls, errors;
};

static void run_start(struct run *r, const char *mode, double secs)
{
	memset(r, 0, sizeof(*r));
	r->mode = mode;
	r->busy0 = machine_busy();
	r->cpu0 = self_cpu();
	r->t0 = now();
	r->end = r->t0 + secs;
}

/* extra: more JSON members, each starting with a comma, or "" */
static void run_report(const struct run *r, const char *extra)
{
	double secs = now() - r->t0, cpu = self_cpu() - r->cpu0;
	double busy = machine_busy() - r->busy0;

	printf("{\"mode\":\"%s\",\"seconds\":%.4f,\"datagrams\":%llu,"
	       "\"calls\":%llu,\"errors\":%llu,\"sender_cpu_s\":%.4f,"
	       "\"machine_busy_s\":%.4f,\"ncpu\":%ld%s}\n",
	       r->mode, secs, r->sent, r->calls, r->errors, cpu, busy,
	       sysconf(_SC_NPROCESSORS_ONLN), extra);
	fflush(stdout);
}

/* ---------- argument parsing ---------- */

static long parse_num(const char *s, long lo, long hi, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || end == s || v < lo || v > hi)
		die("bad %s: '%s' (want %ld..%ld)", what, s, lo, hi);
	return v;
}

static struct in_addr parse_ip(const char *s)
{
	struct in_addr a;

	if (inet_pton(AF_INET, s, &a) != 1)
		die("bad IPv4 address: '%s'", s);
	return a;
}

static void parse_mac(const char *s, uint8_t mac[6])
{
	unsigned int b[6];
	char tail;

	if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &b[0], &b[1], &b[2], &b[3], &b[4],
		   &b[5], &tail) != 6)
		die("bad MAC address: '%s'", s);
	for (int i = 0; i < 6; i++) {
		if (b[i] > 255)
			die("bad MAC address: '%s'", s);
		mac[i] = b[i];
	}
}

/* ---------- receiver ---------- */

static void setsockopt_or_die(int fd, int level, int name, int val,
			      const char *what)
{
	if (setsockopt(fd, level, name, &val, sizeof(val)))
		die_errno(what);
}

/* Short timeouts keep every blocking call inside the time bound. */
static void set_timeouts(int fd)
{
	struct timeval tv = { .tv_sec = 0, .tv_usec = 100000 };

	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)))
		die_errno("SO_RCVTIMEO/SO_SNDTIMEO");
}

static int recv_socket(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_DGRAM, 0), big = 64 << 20;

	if (fd < 0)
		die_errno("socket");
	/* FORCE needs CAP_NET_ADMIN; fall back to the capped variant */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big)))
		setsockopt_or_die(fd, SOL_SOCKET, SO_RCVBUF, big, "SO_RCVBUF");
	setsockopt_or_die(fd, SOL_UDP, UDP_GRO, 1, "UDP_GRO");
	set_timeouts(fd);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)))
		die_errno("bind");
	return fd;
}

/* Datagrams in one read: a GRO'd read carries several of segsize bytes. */
static unsigned long long datagrams_in(struct msghdr *mh, ssize_t len)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		int seg;

		if (c->cmsg_level != SOL_UDP || c->cmsg_type != UDP_GRO)
			continue;
		memcpy(&seg, CMSG_DATA(c), sizeof(seg));
		if (seg > 0)
			return (len + seg - 1) / seg;
	}
	return 1;
}

/* A Udp: counter of this namespace, e.g. RcvbufErrors (dropped on a full
 * socket) or InCsumErrors; -1 if unreadable. */
static long long udp_counter(const char *name)
{
	char names[1024], vals[1024], *n, *v, *sn, *sv;
	FILE *f = fopen("/proc/net/snmp", "r");
	long long res = -1;

	if (!f)
		return -1;
	while (fgets(names, sizeof(names), f) && fgets(vals, sizeof(vals), f)) {
		if (strncmp(names, "Udp: ", 5))
			continue;
		n = strtok_r(names, " \n", &sn);
		v = strtok_r(vals, " \n", &sv);
		while ((n = strtok_r(NULL, " \n", &sn)) &&
		       (v = strtok_r(NULL, " \n", &sv)))
			if (!strcmp(n, name))
				res = atoll(v);
		break;
	}
	fclose(f);
	return res;
}

struct rx {
	int fd;
	struct msghdr mh;
	struct iovec iov;
	char ctrl[CMSG_SPACE(sizeof(int))];
	unsigned long long datagrams, bytes, reads;
};

/* One read; returns datagrams in it, 0 on timeout/nothing queued. */
static unsigned long long rx_one(struct rx *x, int flags)
{
	ssize_t n;

	x->mh.msg_control = x->ctrl;
	x->mh.msg_controllen = sizeof(x->ctrl);
	n = recvmsg(x->fd, &x->mh, flags);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return 0;
		die_errno("recvmsg");
	}
	x->reads++;
	x->bytes += n;
	return datagrams_in(&x->mh, n);
}

/* What already sat in the socket when the window closed (bounded). */
static unsigned long long rx_drain(struct rx *x)
{
	unsigned long long late = 0, d;
	double stop = now() + 0.5;

	while (now() < stop && (d = rx_one(x, MSG_DONTWAIT)) > 0)
		late += d;
	return late;
}

/* Counter delta, or -1 if /proc/net/snmp could not be read. */
static long long delta(long long before, long long after)
{
	return before < 0 || after < 0 ? -1 : after - before;
}

/* Reads for SECS from the first datagram; gives up SECS+5 s after start.
 * Returns the window: first to last read, not the idle timeout after. */
static double rx_window(struct rx *x, double secs)
{
	double start = now(), first = 0, last = 0, t;
	unsigned long long d;

	while ((t = now()) < start + secs + 5 && !(first && t >= first + secs)) {
		d = rx_one(x, 0);
		if (d && !first)
			first = now();
		if (d)
			last = now();
		x->datagrams += d;
	}
	return last - first;
}

static int mode_recv(int argc, char **argv)
{
	static char buf[RECV_BUF];
	struct rx x = { .iov = { buf, sizeof(buf) } };
	long long drops0 = udp_counter("RcvbufErrors");
	long long csum0 = udp_counter("InCsumErrors");
	double secs, cpu0 = self_cpu();
	unsigned long long bytes, reads, late;

	if (argc != 4)
		die("usage: recv PORT SECS");
	x.fd = recv_socket(parse_num(argv[2], 1, 65535, "port"));
	x.mh.msg_iov = &x.iov;
	x.mh.msg_iovlen = 1;
	secs = rx_window(&x, parse_num(argv[3], 1, 3600, "seconds"));
	bytes = x.bytes; /* the drain is outside the window */
	reads = x.reads;
	late = rx_drain(&x);
	printf("{\"mode\":\"recv\",\"seconds\":%.4f,\"datagrams\":%llu,"
	       "\"bytes\":%llu,\"reads\":%llu,\"late_datagrams\":%llu,"
	       "\"rcvbuf_errors\":%lld,\"csum_errors\":%lld,"
	       "\"recv_cpu_s\":%.4f}\n",
	       secs, x.datagrams, bytes, reads, late,
	       delta(drops0, udp_counter("RcvbufErrors")),
	       delta(csum0, udp_counter("InCsumErrors")), self_cpu() - cpu0);
	if (!x.datagrams)
		die("recv: nothing arrived");
	return 0;
}

/* ---------- UDP senders: gso, zerocopy, single ---------- */

static char payload[BATCH * PAYLOAD];

static int udp_sender(const char *ip, const char *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_DGRAM, 0), big = 8 << 20;

	if (fd < 0)
		die_errno("socket");
	sa.sin_addr = parse_ip(ip);
	sa.sin_port = htons(parse_num(port, 1, 65535, "port"));
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)))
		setsockopt_or_die(fd, SOL_SOCKET, SO_SNDBUF, big, "SO_SNDBUF");
	set_timeouts(fd);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
		die_errno("connect");
	memset(payload, 0x5a, sizeof(payload));
	return fd;
}

/* Errors a busy or not-yet-listening path can return: count and go on. */
static int transient(int err)
{
	return err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS ||
	       err == ECONNREFUSED || err == EINTR;
}

/* One vxmeshd-style call: BATCH datagrams, segmented by the kernel. */
static ssize_t send_gso(int fd, int flags)
{
	char ctrl[CMSG_SPACE(sizeof(uint16_t))] = { 0 };
	struct iovec iov = { payload, sizeof(payload) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = ctrl,
			     .msg_controllen = sizeof(ctrl) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	uint16_t gso = PAYLOAD;

	c->cmsg_level = SOL_UDP;
	c->cmsg_type = UDP_SEGMENT;
	c->cmsg_len = CMSG_LEN(sizeof(gso));
	memcpy(CMSG_DATA(c), &gso, sizeof(gso));
	return sendmsg(fd, &mh, flags);
}

/* Returns 1 if the call went out, 0 on a transient error. */
static int account_send(struct run *r, ssize_t n)
{
	r->calls++;
	if (n < 0) {
		if (!transient(errno))
			die_errno("sendmsg");
		r->errors++;
		return 0;
	}
	r->sent += (n + PAYLOAD - 1) / PAYLOAD;
	return 1;
}

static int mode_gso(int argc, char **argv)
{
	struct run r;
	int fd;

	if (argc != 5)
		die("usage: gso DST_IP PORT SECS");
	fd = udp_sender(argv[2], argv[3]);
	run_start(&r, "gso", parse_num(argv[4], 1, 3600, "seconds"));
	while (now() < r.end)
		account_send(&r, send_gso(fd, 0));
	run_report(&r, "");
	return 0;
}

struct zc {
	unsigned long long issued, done, copied, notes;
};

static void zc_note(struct zc *z, const struct sock_extended_err *ee)
{
	unsigned long long n;

	if (ee->ee_errno != 0 || ee->ee_origin != SO_EE_ORIGIN_ZEROCOPY)
		return;
	/* one notification covers the id range [ee_info, ee_data] */
	n = (uint32_t)(ee->ee_data - ee->ee_info) + 1ULL;
	z->done += n;
	z->notes++;
	if (ee->ee_code & SO_EE_CODE_ZEROCOPY_COPIED)
		z->copied += n;
}

/* Read every queued completion; wait up to timeout_ms for the first. */
static void zc_reap(int fd, struct zc *z, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = 0 }; /* POLLERR is implied */
	char ctrl[256];
	struct msghdr mh = { 0 };

	if (poll(&p, 1, timeout_ms) < 0 && errno != EINTR)
		die_errno("poll");
	for (int i = 0; i < 1024; i++) {
		mh.msg_control = ctrl;
		mh.msg_controllen = sizeof(ctrl);
		if (recvmsg(fd, &mh, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				return;
			die_errno("recvmsg(MSG_ERRQUEUE)");
		}
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c;
		     c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR)
				zc_note(z, (void *)CMSG_DATA(c));
	}
}

/* Report once the last completions are in, waiting a second at most. */
static void zc_drain(int fd, struct run *r, struct zc *z)
{
	char extra[256];
	double stop = now() + 1;

	while (z->done < z->issued && now() < stop)
		zc_reap(fd, z, 10);
	snprintf(extra, sizeof(extra),
		 ",\"zc_issued\":%llu,\"zc_completed\":%llu,\"zc_copied\":%llu,"
		 "\"zc_notifications\":%llu",
		 z->issued, z->done, z->copied, z->notes);
	run_report(r, extra);
}

static int mode_zerocopy(int argc, char **argv)
{
	struct zc z = { 0 };
	struct run r;
	int fd;

	if (argc != 5)
		die("usage: zerocopy DST_IP PORT SECS");
	fd = udp_sender(argv[2], argv[3]);
	setsockopt_or_die(fd, SOL_SOCKET, SO_ZEROCOPY, 1, "SO_ZEROCOPY");
	run_start(&r, "zerocopy", parse_num(argv[4], 1, 3600, "seconds"));
	while (now() < r.end) {
		/* payload is never written, so in-flight pages need no guard;
		 * the bound keeps optmem (one ubuf per send) from running out */
		if (z.issued - z.done > ZC_MAX_OUTSTANDING)
			zc_reap(fd, &z, 10);
		if (account_send(&r, send_gso(fd, MSG_ZEROCOPY)))
			z.issued++;
		else if (errno == ENOBUFS)
			zc_reap(fd, &z, 10);
	}
	zc_drain(fd, &r, &z);
	return 0;
}

/* What vxmeshd would do without GSO: one datagram per message. */
static int mode_single(int argc, char **argv)
{
	struct mmsghdr msgs[BATCH];
	struct iovec iovs[BATCH];
	struct run r;
	int fd, n;

	if (argc != 5)
		die("usage: single DST_IP PORT SECS");
	fd = udp_sender(argv[2], argv[3]);
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		iovs[i] = (struct iovec){ payload + i * PAYLOAD, PAYLOAD };
		msgs[i].msg_hdr.msg_iov = &iovs[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	run_start(&r, "single", parse_num(argv[4], 1, 3600, "seconds"));
	while (now() < r.end) {
		r.calls++;
		n = sendmmsg(fd, msgs, BATCH, 0);
		if (n < 0 && !transient(errno))
			die_errno("sendmmsg");
		if (n < 0)
			r.errors++;
		else
			r.sent += n;
	}
	run_report(&r, "");
	return 0;
}

/* ---------- AF_XDP (copy mode) sender ---------- */

struct ring {
	uint32_t *prod, *cons, *flags;
	void *desc;
	uint32_t size;
};

struct xsk {
	int fd;
	uint8_t *umem;
	struct ring tx, cq;
	uint32_t free[XSK_FRAMES], nfree;
	int need_wakeup;
	unsigned long long kicks, kick_again, kick_busy, kick_nobufs;
	unsigned long long outstanding;
};

/* Ones' complement sum of big-endian 16-bit words, odd byte padded. */
static uint32_t csum_add(uint32_t sum, const void *data, size_t len)
{
	const uint8_t *p = data;
	size_t i;

	for (i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)p[i] << 8 | p[i + 1];
	if (i < len)
		sum += (uint32_t)p[i] << 8;
	return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return htons(~sum & 0xffff);
}

/* A real UDP checksum, like the GSO segments carry; frames are built
 * once, so it costs nothing per packet here. (0 would be legal for
 * IPv4, but the kernel's UDP GRO refuses checksum-0 datagrams.) */
static uint16_t udp_checksum(const struct iphdr *ip, const void *udp,
			     size_t len)
{
	uint8_t pseudo[12];
	uint16_t ulen = htons(len), sum;

	memcpy(pseudo, &ip->saddr, 4);
	memcpy(pseudo + 4, &ip->daddr, 4);
	pseudo[8] = 0, pseudo[9] = IPPROTO_UDP;
	memcpy(pseudo + 10, &ulen, 2);
	sum = csum_fold(csum_add(csum_add(0, pseudo, 12), udp, len));
	return sum ? sum : 0xffff; /* 0 on the wire means "no checksum" */
}

struct frame_cfg {
	uint8_t src_mac[6], dst_mac[6];
	struct in_addr src, dst;
	uint16_t port;
};

/* One GSO segment as it goes on the wire: same sizes and headers (the
 * ports aside: the UDP senders use an ephemeral source port). */
static void build_frame(uint8_t *f, const struct frame_cfg *c)
{
	struct iphdr *ip = (void *)(f + 14);
	struct udphdr *udp = (void *)(f + 34);

	memcpy(f, c->dst_mac, 6);
	memcpy(f + 6, c->src_mac, 6);
	f[12] = 0x08, f[13] = 0x00;
	*ip = (struct iphdr){ .version = 4, .ihl = 5, .ttl = 64,
			      .protocol = IPPROTO_UDP,
			      .tot_len = htons(20 + 8 + PAYLOAD),
			      .saddr = c->src.s_addr, .daddr = c->dst.s_addr };
	ip->check = csum_fold(csum_add(0, ip, 20));
	*udp = (struct udphdr){ .source = htons(c->port),
				.dest = htons(c->port),
				.len = htons(8 + PAYLOAD) };
	memset(f + 42, 0x5a, PAYLOAD);
	udp->check = udp_checksum(ip, udp, 8 + PAYLOAD);
}

static uint8_t *umem_area(const struct frame_cfg *c)
{
	size_t len = (size_t)XSK_FRAMES * XSK_FRAME_SIZE;
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (m == MAP_FAILED)
		die_errno("mmap umem");
	/* frames are never rewritten: any free frame can go out as is */
	for (int i = 0; i < XSK_FRAMES; i++)
		build_frame(m + (size_t)i * XSK_FRAME_SIZE, c);
	return m;
}

/* UMEM plus fill, completion and TX rings; bind comes later. */
static int xsk_socket(uint8_t *umem)
{
	struct xdp_umem_reg reg = { .addr = (uintptr_t)umem,
				    .len = (uint64_t)XSK_FRAMES * XSK_FRAME_SIZE,
				    .chunk_size = XSK_FRAME_SIZE };
	int fd = socket(AF_XDP, SOCK_RAW, 0);

	if (fd < 0)
		die_errno("socket(AF_XDP)");
	if (setsockopt(fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)))
		die_errno("XDP_UMEM_REG");
	setsockopt_or_die(fd, SOL_XDP, XDP_UMEM_FILL_RING, XSK_FQ_SIZE,
			  "XDP_UMEM_FILL_RING");
	setsockopt_or_die(fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, XSK_CQ_SIZE,
			  "XDP_UMEM_COMPLETION_RING");
	setsockopt_or_die(fd, SOL_XDP, XDP_TX_RING, XSK_TX_SIZE, "XDP_TX_RING");
	return fd;
}

/* Returns 0 or the errno of a refused bind. */
static int xsk_bind(int fd, unsigned int ifindex, uint16_t flags)
{
	struct sockaddr_xdp sa = { .sxdp_family = AF_XDP,
				   .sxdp_ifindex = ifindex,
				   .sxdp_queue_id = 0,
				   .sxdp_flags = flags };

	return bind(fd, (struct sockaddr *)&sa, sizeof(sa)) ? errno : 0;
}

static void map_ring(int fd, const struct xdp_ring_offset *off, off_t pgoff,
		     uint32_t size, size_t esize, struct ring *r)
{
	uint8_t *m = mmap(NULL, off->desc + size * esize,
			  PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
			  fd, pgoff);

	if (m == MAP_FAILED)
		die_errno("mmap ring");
	r->prod = (void *)(m + off->producer);
	r->cons = (void *)(m + off->consumer);
	r->flags = (void *)(m + off->flags);
	r->desc = m + off->desc;
	r->size = size;
}

static void xsk_map(struct xsk *x)
{
	struct xdp_mmap_offsets off;
	socklen_t len = sizeof(off);

	if (getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &len))
		die_errno("XDP_MMAP_OFFSETS");
	map_ring(x->fd, &off.tx, XDP_PGOFF_TX_RING, XSK_TX_SIZE,
		 sizeof(struct xdp_desc), &x->tx);
	map_ring(x->fd, &off.cr, XDP_UMEM_PGOFF_COMPLETION_RING, XSK_CQ_SIZE,
		 sizeof(uint64_t), &x->cq);
}

/* Try zero-copy on a throw-away socket, so that a refused bind leaves
 * no half-set-up state behind on the socket we actually use. */
static int try_zerocopy_bind(uint8_t *umem, unsigned int ifindex)
{
	int fd = xsk_socket(umem), err = xsk_bind(fd, ifindex, XDP_ZEROCOPY);

	close(fd);
	return err;
}

/* Copy-mode bind; returns whether XDP_USE_NEED_WAKEUP was accepted. */
static int bind_copy(int fd, unsigned int ifindex)
{
	int err = xsk_bind(fd, ifindex, XDP_COPY | XDP_USE_NEED_WAKEUP);

	if (!err)
		return 1;
	if (err != EINVAL || (err = xsk_bind(fd, ifindex, XDP_COPY)))
		die("bind AF_XDP copy mode: %s (errno %d)", strerror(err), err);
	return 0;
}

/* Put up to XSK_BURST free frames on the TX ring. */
static void tx_push(struct xsk *x)
{
	struct xdp_desc *d = x->tx.desc;
	uint32_t prod = *x->tx.prod;
	uint32_t room = x->tx.size -
			(prod - __atomic_load_n(x->tx.cons, __ATOMIC_ACQUIRE));
	uint32_t n = room < x->nfree ? room : x->nfree;

	n = n < XSK_BURST ? n : XSK_BURST;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t frame = x->free[--x->nfree];

		d[(prod + i) & (x->tx.size - 1)] = (struct xdp_desc){
			.addr = (uint64_t)frame * XSK_FRAME_SIZE,
			.len = FRAME_LEN };
	}
	__atomic_store_n(x->tx.prod, prod + n, __ATOMIC_RELEASE);
	x->outstanding += n;
}

/* Recycle completed frames; returns how many completed. */
static uint32_t cq_reap(struct xsk *x)
{
	uint64_t *addrs = x->cq.desc;
	uint32_t cons = *x->cq.cons;
	uint32_t n = __atomic_load_n(x->cq.prod, __ATOMIC_ACQUIRE) - cons;

	for (uint32_t i = 0; i < n; i++)
		x->free[x->nfree++] =
			addrs[(cons + i) & (x->cq.size - 1)] / XSK_FRAME_SIZE;
	__atomic_store_n(x->cq.cons, cons + n, __ATOMIC_RELEASE);
	x->outstanding -= n;
	return n;
}

/* Copy mode transmits only inside this syscall (a batch per call). */
static void kick(struct xsk *x)
{
	if (x->need_wakeup &&
	    !(__atomic_load_n(x->tx.flags, __ATOMIC_ACQUIRE) &
	      XDP_RING_NEED_WAKEUP))
		return;
	x->kicks++;
	if (sendto(x->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
		return;
	/* EAGAIN: the per-call batch ran out with frames left on the ring,
	 * or the device was busy; EBUSY: the device dropped a frame (which
	 * still completes); ENOBUFS: no skb. All are retried next round. */
	if (errno == EAGAIN || errno == EINTR)
		x->kick_again++;
	else if (errno == EBUSY)
		x->kick_busy++;
	else if (errno == ENOBUFS)
		x->kick_nobufs++;
	else
		die_errno("sendto(AF_XDP)");
}

static void xdp_report(struct run *r, struct xsk *x, int zc_err, int nw)
{
	struct xdp_statistics st = { 0 };
	socklen_t len = sizeof(st);
	char extra[512];

	if (getsockopt(x->fd, SOL_XDP, XDP_STATISTICS, &st, &len))
		die_errno("XDP_STATISTICS");
	snprintf(extra, sizeof(extra),
		 ",\"bind\":\"copy\",\"zerocopy_bind_errno\":%d,"
		 "\"zerocopy_bind_error\":\"%s\",\"need_wakeup\":%s,"
		 "\"kicks\":%llu,\"kick_eagain\":%llu,\"kick_ebusy_dropped\":%llu,"
		 "\"kick_enobufs\":%llu,\"left_in_flight\":%llu,"
		 "\"tx_invalid_descs\":%llu",
		 zc_err, zc_err ? strerror(zc_err) : "accepted",
		 nw ? "true" : "false", x->kicks, x->kick_again, x->kick_busy,
		 x->kick_nobufs, x->outstanding,
		 (unsigned long long)st.tx_invalid_descs);
	r->calls = x->kicks;
	/* EAGAIN is flow control, not an error */
	r->errors = x->kick_busy + x->kick_nobufs;
	run_report(r, extra);
}

static void xdp_args(char **argv, struct frame_cfg *c, unsigned int *ifindex)
{
	*ifindex = if_nametoindex(argv[2]);
	if (!*ifindex)
		die("no interface '%s' in this namespace", argv[2]);
	parse_mac(argv[3], c->src_mac);
	parse_mac(argv[4], c->dst_mac);
	c->src = parse_ip(argv[5]);
	c->dst = parse_ip(argv[6]);
	c->port = parse_num(argv[7], 1, 65535, "port");
}

static int mode_xdp(int argc, char **argv)
{
	static struct xsk x;
	struct frame_cfg c;
	unsigned int ifindex;
	struct run r;
	int zc_err;

	if (argc != 9)
		die("usage: xdp IFNAME SRC_MAC DST_MAC SRC_IP DST_IP PORT SECS");
	xdp_args(argv, &c, &ifindex);
	x.umem = umem_area(&c);
	zc_err = try_zerocopy_bind(x.umem, ifindex);
	x.fd = xsk_socket(x.umem);
	x.need_wakeup = bind_copy(x.fd, ifindex);
	xsk_map(&x);
	for (uint32_t i = 0; i < XSK_FRAMES; i++)
		x.free[x.nfree++] = i;
	run_start(&r, "xdp", parse_num(argv[8], 1, 3600, "seconds"));
	while (now() < r.end) {
		tx_push(&x);
		kick(&x);
		r.sent += cq_reap(&x);
	}
	xdp_report(&r, &x, zc_err, x.need_wakeup);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int, char **);
	} modes[] = { { "recv", mode_recv },	     { "gso", mode_gso },
		      { "zerocopy", mode_zerocopy }, { "single", mode_single },
		      { "xdp", mode_xdp } };

	for (size_t i = 0; argc > 1 && i < sizeof(modes) / sizeof(modes[0]); i++)
		if (!strcmp(argv[1], modes[i].name))
			return modes[i].fn(argc, argv);
	die("usage: %s recv|gso|zerocopy|single|xdp ARGS... (see the source)",
	    argv[0]);
	return 2;
}
