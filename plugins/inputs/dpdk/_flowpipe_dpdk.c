/*
 * The C side of flowpipe's dpdk input: a few plain functions over DPDK's EAL and ethdev API, for
 * Python's ctypes. DPDK's receive path (rte_eth_rx_burst, rte_pktmbuf_free) is made of inline
 * functions and mbuf fields, so it cannot be called from ctypes directly; this file is built
 * against the system DPDK (pkg-config libdpdk) on first use, see binding.py.
 *
 * Every function returns 0 (or a count) on success and a negative errno on failure, and writes a
 * one-line reason into `err` where it takes one. One EAL per process (DPDK's own rule); ports are
 * used from one thread at a time (the caller locks).
 */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_log.h>
#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>

#define FPD_PCAP_DRIVER "net_pcap"
#define FPD_US_PER_S 1000000u
#define FPD_MAX_BURST 1024

struct fpd_port {
	struct rte_mempool *pool;
	int started;
	/* net_pcap puts each packet's capture time (microseconds since the epoch) in the
	 * timestamp dynfield and sets the Rx timestamp flag; other drivers use their own
	 * clock units there (if at all), so only net_pcap's are taken. */
	int pcap_timestamps;
};

static struct fpd_port ports[RTE_MAX_ETHPORTS];
static int timestamp_offset = -1;
static uint64_t timestamp_flag;

static int fail(char *err, size_t errlen, int code, const char *what)
{
	snprintf(err, errlen, "%s: %s", what, rte_strerror(code < 0 ? -code : code));
	return code < 0 ? code : -code;
}

/* rte_eal_init with the given arguments (argv[0] is the program name); DPDK's log goes to
 * stderr, never to standard output (where events may be written). */
int fpd_eal_init(int argc, char **argv, char *err, size_t errlen)
{
	rte_openlog_stream(stderr);
	if (rte_eal_init(argc, argv) < 0)
		return fail(err, errlen, rte_errno, "EAL initialisation failed");
	return 0;
}

/* The folder of the EAL's runtime files (config, sockets) of this process. */
const char *fpd_runtime_dir(void)
{
	return rte_eal_get_runtime_dir();
}

/* How many ethdev ports the EAL found (NICs bound to DPDK drivers, and vdevs). */
int fpd_port_count(void)
{
	return rte_eth_dev_count_avail();
}

/* The driver's name of a valid port, e.g. "net_pcap", into `name`. */
int fpd_port_driver(uint16_t port, char *name, size_t len)
{
	struct rte_eth_dev_info info;
	int rc;

	if (!rte_eth_dev_is_valid_port(port))
		return -ENODEV;
	rc = rte_eth_dev_info_get(port, &info);
	if (rc < 0)
		return rc;
	snprintf(name, len, "%s", info.driver_name);
	return 0;
}

/* The device's name of a valid port (a vdev's name such as "net_pcap0", or a PCI address). */
int fpd_port_name(uint16_t port, char *name, size_t len)
{
	char device[RTE_ETH_NAME_MAX_LEN];
	int rc = rte_eth_dev_get_name_by_port(port, device);

	if (rc < 0)
		return rc;
	snprintf(name, len, "%s", device);
	return 0;
}

/* Receive side scaling over IP addresses and ports when the port spreads packets over several
 * queues and can hash; otherwise a single flow of queues as the driver deals them. */
static void set_rss(struct rte_eth_conf *conf, const struct rte_eth_dev_info *info, uint16_t rx_queues)
{
	uint64_t hash = info->flow_type_rss_offloads & (RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP);

	if (rx_queues > 1 && hash) {
		conf->rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
		conf->rx_adv_conf.rss_conf.rss_key = NULL;
		conf->rx_adv_conf.rss_conf.rss_hf = hash;
	}
}

/* Configure `port` with `rx_queues` receive queues of `rx_desc` descriptors fed from a new
 * mempool of `pool_size` mbufs (per-lcore cache `pool_cache`), one transmit queue when the
 * driver has any (some need one; it is never used), start it and set promiscuous mode. */
int fpd_port_open(uint16_t port, uint16_t rx_queues, uint16_t rx_desc, uint32_t pool_size,
		  uint32_t pool_cache, int promiscuous, char *err, size_t errlen)
{
	struct fpd_port *state;
	struct rte_eth_dev_info info;
	struct rte_eth_conf conf;
	char pool_name[RTE_MEMPOOL_NAMESIZE];
	uint16_t tx_queues, tx_desc = 512;
	int socket, rc;
	uint16_t queue;

	if (!rte_eth_dev_is_valid_port(port)) {
		snprintf(err, errlen, "no such port (DPDK has %u port(s), numbered from 0)",
			 rte_eth_dev_count_avail());
		return -ENODEV;
	}
	state = &ports[port];
	rc = rte_eth_dev_info_get(port, &info);
	if (rc < 0)
		return fail(err, errlen, rc, "cannot read its device information");
	if (rx_queues > info.max_rx_queues) {
		snprintf(err, errlen, "its driver (%s) has at most %u receive queue(s), %u asked",
			 info.driver_name, info.max_rx_queues, rx_queues);
		return -EINVAL;
	}
	socket = rte_eth_dev_socket_id(port);
	if (socket < 0)
		socket = (int)rte_socket_id();

	snprintf(pool_name, sizeof(pool_name), "flowpipe_rx_%u", port);
	state->pool = rte_pktmbuf_pool_create(pool_name, pool_size, pool_cache, 0,
					      RTE_MBUF_DEFAULT_BUF_SIZE, socket);
	if (state->pool == NULL)
		return fail(err, errlen, rte_errno, "cannot create the mbuf pool (does it fit in the EAL's memory, -m?)");

	memset(&conf, 0, sizeof(conf));
	set_rss(&conf, &info, rx_queues);
	tx_queues = info.max_tx_queues > 0 ? 1 : 0;
	rc = rte_eth_dev_configure(port, rx_queues, tx_queues, &conf);
	if (rc < 0)
		return fail(err, errlen, rc, "cannot configure it");
	rc = rte_eth_dev_adjust_nb_rx_tx_desc(port, &rx_desc, &tx_desc);
	if (rc < 0)
		return fail(err, errlen, rc, "cannot size its descriptor rings");
	for (queue = 0; queue < rx_queues; queue++) {
		rc = rte_eth_rx_queue_setup(port, queue, rx_desc, socket, NULL, state->pool);
		if (rc < 0)
			return fail(err, errlen, rc, "cannot set up a receive queue");
	}
	if (tx_queues) {
		rc = rte_eth_tx_queue_setup(port, 0, tx_desc, socket, NULL);
		if (rc < 0)
			return fail(err, errlen, rc, "cannot set up its transmit queue");
	}
	rc = rte_eth_dev_start(port);
	if (rc < 0)
		return fail(err, errlen, rc, "cannot start it");
	state->started = 1;
	if (promiscuous) {
		rc = rte_eth_promiscuous_enable(port);
		if (rc < 0 && rc != -ENOTSUP)
			return fail(err, errlen, rc, "cannot enable promiscuous mode");
	}

	state->pcap_timestamps = 0;
	if (strcmp(info.driver_name, FPD_PCAP_DRIVER) == 0) {
		timestamp_offset = rte_mbuf_dynfield_lookup(RTE_MBUF_DYNFIELD_TIMESTAMP_NAME, NULL);
		rc = rte_mbuf_dynflag_lookup(RTE_MBUF_DYNFLAG_RX_TIMESTAMP_NAME, NULL);
		if (timestamp_offset >= 0 && rc >= 0) {
			timestamp_flag = UINT64_C(1) << rc;
			state->pcap_timestamps = 1;
		}
	}
	return 0;
}

/* 1 when packets of `port` carry net_pcap's capture timestamps, else 0 (wall clock). */
int fpd_port_pcap_timestamps(uint16_t port)
{
	return port < RTE_MAX_ETHPORTS && ports[port].pcap_timestamps;
}

/* Make the calling thread an EAL thread (an lcore id of its own), so the mempool's per-lcore
 * cache serves it. Fails harmlessly when no lcore id is left: the pool then works uncached. */
int fpd_thread_register(void)
{
	return rte_thread_register() < 0 ? -rte_errno : (int)rte_lcore_id();
}

static double wall_clock(void)
{
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* Receive up to `max` packets (at most FPD_MAX_BURST) from one queue. Each packet's first `snaplen` bytes are copied
 * one after the other into `data` (room for max * snaplen bytes), its copied length into
 * `caplens`, its length on the wire (pkt_len) into `wirelens` and its time (seconds since the
 * epoch) into `timestamps`; the mbufs go back to their pool. Returns the number of packets.
 *
 * The time is the capture time net_pcap read from its file when the port has it (as seconds +
 * microseconds * 1e-6, the very arithmetic of the pcap input, so both give equal floats), else
 * the wall clock when the burst was received (one reading for the whole burst). */
int fpd_rx_burst(uint16_t port, uint16_t queue, uint16_t max, uint8_t *data, uint32_t snaplen,
		 uint32_t *caplens, uint32_t *wirelens, double *timestamps)
{
	struct rte_mbuf *mbufs[FPD_MAX_BURST];
	const struct fpd_port *state = &ports[port];
	uint16_t count, i;
	double now = 0.0;
	size_t offset = 0;

	if (!state->started)
		return -ENODEV;
	if (max > FPD_MAX_BURST)
		max = FPD_MAX_BURST;
	count = rte_eth_rx_burst(port, queue, mbufs, max);
	if (count == 0)
		return 0;
	if (!state->pcap_timestamps)
		now = wall_clock();
	for (i = 0; i < count; i++) {
		struct rte_mbuf *mbuf = mbufs[i];
		uint32_t length = rte_pktmbuf_pkt_len(mbuf);
		uint32_t copied = length < snaplen ? length : snaplen;
		const void *bytes = rte_pktmbuf_read(mbuf, 0, copied, data + offset);

		if (bytes == NULL) /* the chain is shorter than pkt_len says: keep what is there */
			copied = 0;
		else if (bytes != data + offset)
			memcpy(data + offset, bytes, copied);
		caplens[i] = copied;
		wirelens[i] = length;
		if (state->pcap_timestamps && (mbuf->ol_flags & timestamp_flag)) {
			uint64_t micros = *RTE_MBUF_DYNFIELD(mbuf, timestamp_offset, rte_mbuf_timestamp_t *);

			timestamps[i] = (double)(micros / FPD_US_PER_S) + (double)(micros % FPD_US_PER_S) * 1e-6;
		} else {
			timestamps[i] = now != 0.0 ? now : (now = wall_clock());
		}
		offset += copied;
		rte_pktmbuf_free(mbuf);
	}
	return count;
}

/* The port's counters: ipackets, imissed, ierrors, rx_nombuf (in this order, into `out`). */
int fpd_port_stats(uint16_t port, uint64_t *out)
{
	struct rte_eth_stats stats;
	int rc = rte_eth_stats_get(port, &stats);

	if (rc < 0)
		return rc;
	out[0] = stats.ipackets;
	out[1] = stats.imissed;
	out[2] = stats.ierrors;
	out[3] = stats.rx_nombuf;
	return 0;
}

/* Stop and close the port, and free its pool (the port no longer holds mbufs from it). */
void fpd_port_close(uint16_t port)
{
	struct fpd_port *state;

	if (!rte_eth_dev_is_valid_port(port))
		return;
	state = &ports[port];
	if (state->started) {
		rte_eth_dev_stop(port);
		state->started = 0;
	}
	rte_eth_dev_close(port);
	if (state->pool != NULL) {
		rte_mempool_free(state->pool);
		state->pool = NULL;
	}
}

/* Release the EAL's resources (the EAL cannot be initialised again in this process). */
int fpd_eal_cleanup(void)
{
	return rte_eal_cleanup();
}
