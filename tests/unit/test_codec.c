/*
 * Unit tests for the wire border: proto/frame.c (length framing) and
 * proto/codec.c (bounded protobuf-c unpacking, framed packing, name checks).
 *
 * Everything here is bytes in, values out: no sockets and no clock. The
 * round-trip tests pack with codec_pack_frame, split the frame with
 * frame_parse and unpack into a bounded arena, as the daemon and the client
 * library do.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "frame.h"

#define ARENA_CAP (64 * 1024)

static struct codec_arena arena;
static uint8_t *packed; /* the last frame pack_frame() made */

static void
setup(void)
{
	codec_arena_init(&arena, ARENA_CAP);
	cr_assert_not_null(arena.buf);
	packed = NULL;
}

static void
teardown(void)
{
	codec_arena_free(&arena);
	free(packed);
	packed = NULL;
}

TestSuite(frame);
TestSuite(codec, .init = setup, .fini = teardown);

/* ------------------------------------------------------------ helpers */

/* Pack m as a frame into `packed`; returns the frame's length. */
static size_t
pack_frame(const ProtobufCMessage *m)
{
	size_t want = codec_frame_size(m), n;

	free(packed);
	packed = malloc(want);
	cr_assert_not_null(packed);
	n = codec_pack_frame(m, packed);
	cr_assert_eq(n, want, "packed %zu bytes, frame_size said %zu", n, want);
	return n;
}

/* The payload of the frame in `packed`, checked with frame_parse. */
static const uint8_t *
payload_of(size_t frame_len, size_t *n)
{
	uint32_t plen = 0;

	cr_assert_eq(frame_parse(packed, frame_len, FRAME_HARD_MAX, &plen),
		     FRAME_OK);
	cr_assert_eq((size_t)plen + FRAME_HEADER, frame_len);
	*n = plen;
	return packed + FRAME_HEADER;
}

static Arbiter__Request *
roundtrip(const Arbiter__Request *in)
{
	size_t flen = pack_frame(&in->base), n;
	const uint8_t *p = payload_of(flen, &n);
	Arbiter__Request *out;

	codec_arena_reset(&arena);
	out = codec_unpack_request(&arena, p, n);
	cr_assert_not_null(out, "a packed request must decode");
	cr_assert_eq(out->id, in->id);
	cr_assert_eq(out->kind_case, in->kind_case);
	cr_assert_leq(arena.used, arena.cap);
	return out;
}

static Arbiter__ServerMessage *
roundtrip_server(const Arbiter__ServerMessage *in)
{
	size_t flen = pack_frame(&in->base), n;
	const uint8_t *p = payload_of(flen, &n);
	Arbiter__ServerMessage *out;

	codec_arena_reset(&arena);
	out = codec_unpack_server(&arena, p, n);
	cr_assert_not_null(out, "a packed server message must decode");
	cr_assert_eq(out->kind_case, in->kind_case);
	return out;
}

static ProtobufCBinaryData
bin(const void *p, size_t len)
{
	ProtobufCBinaryData b;

	b.data = (uint8_t *)(uintptr_t)p;
	b.len = len;
	return b;
}

static void
assert_bin_eq(ProtobufCBinaryData got, const void *want, size_t len)
{
	cr_assert_eq(got.len, len, "length %zu, want %zu", got.len, len);
	cr_assert_eq(memcmp(got.data, want, len), 0);
}

/* ------------------------------------------------------------ frame_parse */

static size_t
make_frame(uint8_t *buf, const uint8_t *payload, uint32_t len)
{
	frame_put_header(buf, len);
	memcpy(buf + FRAME_HEADER, payload, len);
	return FRAME_HEADER + (size_t)len;
}

Test(frame, need_more_at_every_prefix_length)
{
	uint8_t payload[37], buf[64];
	size_t total;
	uint32_t plen;

	for (size_t i = 0; i < sizeof payload; i++)
		payload[i] = (uint8_t)(i * 7 + 1);
	total = make_frame(buf, payload, sizeof payload);
	for (size_t len = 0; len < total; len++) {
		plen = 0xdeadbeef;
		cr_assert_eq(frame_parse(buf, len, 1024, &plen),
			     FRAME_NEED_MORE, "prefix of %zu of %zu bytes", len,
			     total);
	}
	cr_assert_eq(frame_parse(buf, total, 1024, &plen), FRAME_OK);
	cr_assert_eq(plen, sizeof payload);
}

Test(frame, trailing_bytes_of_the_next_frame_do_not_matter)
{
	uint8_t buf[32] = {0};
	uint32_t plen;

	make_frame(buf, (const uint8_t *)"abc", 3);
	memset(buf + 7, 0xff, sizeof buf - 7);
	cr_assert_eq(frame_parse(buf, sizeof buf, 1024, &plen), FRAME_OK);
	cr_assert_eq(plen, 3);
}

Test(frame, header_is_four_bytes_big_endian)
{
	const uint8_t hdr[4] = {0x00, 0x01, 0x02, 0x03};
	uint8_t out[4];
	uint32_t plen;

	cr_assert_eq(frame_parse(hdr, 4, FRAME_HARD_MAX, &plen),
		     FRAME_NEED_MORE);
	cr_assert_eq(plen, 0x010203);
	frame_put_header(out, 0x0a0b0c);
	cr_assert_eq(out[0], 0x00);
	cr_assert_eq(out[1], 0x0a);
	cr_assert_eq(out[2], 0x0b);
	cr_assert_eq(out[3], 0x0c);
}

Test(frame, put_header_round_trips_and_starts_with_zero)
{
	const uint32_t lens[] = {1,	2,     255,	 256,
				 65535, 65536, 1u << 20, FRAME_HARD_MAX};

	for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
		uint8_t hdr[4];
		uint32_t plen = 0;

		frame_put_header(hdr, lens[i]);
		cr_assert_eq(hdr[0], 0,
			     "a binary frame always starts with 0x00");
		cr_assert_eq(frame_parse(hdr, 4, FRAME_HARD_MAX, &plen),
			     FRAME_NEED_MORE);
		cr_assert_eq(plen, lens[i]);
	}
}

Test(frame, zero_length_is_refused)
{
	const uint8_t hdr[8] = {0, 0, 0, 0, 'x', 'y', 'z', 'w'};
	uint32_t plen;

	for (size_t len = 0; len < 4; len++)
		cr_assert_eq(frame_parse(hdr, len, 1024, &plen),
			     FRAME_NEED_MORE);
	cr_assert_eq(frame_parse(hdr, 4, 1024, &plen), FRAME_EMPTY);
	cr_assert_eq(frame_parse(hdr, 8, 1024, &plen), FRAME_EMPTY);
}

Test(frame, length_over_max_is_refused_from_the_header_alone)
{
	uint8_t hdr[4];
	uint32_t plen;

	frame_put_header(hdr, 1025);
	cr_assert_eq(frame_parse(hdr, 4, 1024, &plen), FRAME_TOO_BIG,
		     "refused before any payload arrives");
	frame_put_header(hdr, 0xffffffffu);
	cr_assert_eq(frame_parse(hdr, 4, 1024, &plen), FRAME_TOO_BIG);
	frame_put_header(hdr, 2);
	cr_assert_eq(frame_parse(hdr, 4, 1, &plen), FRAME_TOO_BIG);
}

Test(frame, exactly_max_is_accepted)
{
	enum { MAX = 300 };
	uint8_t *buf = calloc(1, FRAME_HEADER + MAX);
	uint32_t plen = 0;

	cr_assert_not_null(buf);
	frame_put_header(buf, MAX);
	cr_assert_eq(frame_parse(buf, 4, MAX, &plen), FRAME_NEED_MORE);
	cr_assert_eq(frame_parse(buf, FRAME_HEADER + MAX - 1, MAX, &plen),
		     FRAME_NEED_MORE);
	cr_assert_eq(frame_parse(buf, FRAME_HEADER + MAX, MAX, &plen),
		     FRAME_OK);
	cr_assert_eq(plen, MAX);
	frame_put_header(buf, MAX + 1);
	cr_assert_eq(frame_parse(buf, FRAME_HEADER + MAX, MAX, &plen),
		     FRAME_TOO_BIG);
	free(buf);
}

Test(frame, hard_max_holds_whatever_max_is_configured)
{
	uint8_t hdr[4];
	uint32_t plen;

	frame_put_header(hdr, FRAME_HARD_MAX);
	cr_assert_eq(frame_parse(hdr, 4, UINT32_MAX, &plen), FRAME_NEED_MORE);
	hdr[0] = 0x01; /* 2^24: the first byte would no longer be 0x00 */
	hdr[1] = hdr[2] = hdr[3] = 0;
	cr_assert_eq(frame_parse(hdr, 4, UINT32_MAX, &plen), FRAME_TOO_BIG);
}

/*
 * A stream reassembler like conn.c's: bytes arrive in chunks of any size,
 * complete frames are taken off the front. Headers and payloads split at
 * every position must come out whole and in order.
 */
Test(frame, frames_split_across_reads_come_out_whole_and_in_order)
{
	enum { NFRAMES = 6, MAXP = 40 };
	uint8_t stream[NFRAMES * (FRAME_HEADER + MAXP)];
	size_t lens[NFRAMES], total = 0;

	for (int f = 0; f < NFRAMES; f++) {
		uint8_t payload[MAXP];

		lens[f] = 1 + (size_t)(f * 7) % MAXP;
		for (size_t i = 0; i < lens[f]; i++)
			payload[i] = (uint8_t)(f * 31 + (int)i);
		total += make_frame(stream + total, payload, (uint32_t)lens[f]);
	}

	for (size_t chunk = 1; chunk <= 9; chunk++) {
		uint8_t buf[sizeof stream];
		size_t have = 0, fed = 0;
		int got = 0;

		while (fed < total || have > 0) {
			uint32_t plen;
			enum frame_status st;
			size_t n = total - fed < chunk ? total - fed : chunk;

			memcpy(buf + have, stream + fed, n);
			have += n;
			fed += n;
			while ((st = frame_parse(buf, have, MAXP, &plen)) ==
			       FRAME_OK) {
				cr_assert_lt(got, NFRAMES);
				cr_assert_eq(plen, lens[got]);
				for (size_t i = 0; i < plen; i++)
					cr_assert_eq(
					    buf[FRAME_HEADER + i],
					    (uint8_t)(got * 31 + (int)i));
				memmove(buf, buf + FRAME_HEADER + plen,
					have - FRAME_HEADER - plen);
				have -= FRAME_HEADER + plen;
				got++;
			}
			cr_assert_eq(st, FRAME_NEED_MORE);
			if (n == 0)
				break;
		}
		cr_assert_eq(got, NFRAMES, "chunk size %zu", chunk);
		cr_assert_eq(have, 0);
	}
}

/* ------------------------------------------------------------ round trips */

Test(codec, hello_round_trips)
{
	Arbiter__Request rq = ARBITER__REQUEST__INIT;
	Arbiter__Hello h = ARBITER__HELLO__INIT;
	Arbiter__Request *out;

	h.protocol_version = ARB_PROTOCOL_VERSION;
	h.has_client_name = 1;
	h.client_name = bin("indexer-7", 9);
	rq.id = 1;
	rq.kind_case = ARBITER__REQUEST__KIND_HELLO;
	rq.hello = &h;
	out = roundtrip(&rq);
	cr_assert_eq(out->hello->protocol_version, ARB_PROTOCOL_VERSION);
	cr_assert(out->hello->has_client_name);
	assert_bin_eq(out->hello->client_name, "indexer-7", 9);
}

Test(codec, acquire_round_trips_with_every_field)
{
	static const char name[] = "db/\xe2\x82\xac/\0tail"; /* NUL kept */
	Arbiter__Request rq = ARBITER__REQUEST__INIT;
	Arbiter__Acquire a = ARBITER__ACQUIRE__INIT;
	Arbiter__Request *out;

	a.resource = bin(name, sizeof name - 1);
	a.has_mode = 1;
	a.mode = ARBITER__MODE__SHARED;
	a.has_timeout_ms = 1;
	a.timeout_ms = 0; /* present and zero: try once */
	a.has_ttl_ms = 1;
	a.ttl_ms = 30000;
	a.has_lock_delay_ms = 1;
	a.lock_delay_ms = 250;
	a.has_position_updates = 1;
	a.position_updates = 1;
	rq.id = UINT64_MAX;
	rq.kind_case = ARBITER__REQUEST__KIND_ACQUIRE;
	rq.acquire = &a;
	out = roundtrip(&rq);
	assert_bin_eq(out->acquire->resource, name, sizeof name - 1);
	cr_assert(out->acquire->has_mode);
	cr_assert_eq(out->acquire->mode, ARBITER__MODE__SHARED);
	cr_assert(out->acquire->has_timeout_ms,
		  "timeout 0 (try once) must stay distinct from absent");
	cr_assert_eq(out->acquire->timeout_ms, 0);
	cr_assert_eq(out->acquire->ttl_ms, 30000);
	cr_assert_eq(out->acquire->lock_delay_ms, 250);
	cr_assert(out->acquire->has_position_updates);
	cr_assert(out->acquire->position_updates);
}

Test(codec, acquire_round_trips_with_defaults)
{
	Arbiter__Request rq = ARBITER__REQUEST__INIT;
	Arbiter__Acquire a = ARBITER__ACQUIRE__INIT;
	Arbiter__Request *out;

	a.resource = bin("x", 1);
	rq.id = 2;
	rq.kind_case = ARBITER__REQUEST__KIND_ACQUIRE;
	rq.acquire = &a;
	out = roundtrip(&rq);
	cr_assert_not(out->acquire->has_timeout_ms, "absent: wait forever");
	cr_assert_not(out->acquire->has_ttl_ms);
	cr_assert_not(out->acquire->has_lock_delay_ms);
	cr_assert_not(out->acquire->has_mode);
	cr_assert_eq(out->acquire->mode, ARBITER__MODE__EXCLUSIVE);
}

Test(codec, release_round_trips_by_lease_or_request_id)
{
	Arbiter__Request rq = ARBITER__REQUEST__INIT;
	Arbiter__Release r = ARBITER__RELEASE__INIT;
	Arbiter__Request *out;

	r.has_lease_id = 1;
	r.lease_id = 1234567890123ull;
	rq.id = 3;
	rq.kind_case = ARBITER__REQUEST__KIND_RELEASE;
	rq.release = &r;
	out = roundtrip(&rq);
	cr_assert(out->release->has_lease_id);
	cr_assert_not(out->release->has_request_id);
	cr_assert_eq(out->release->lease_id, 1234567890123ull);

	r.has_lease_id = 0;
	r.has_request_id = 1;
	r.request_id = 77;
	out = roundtrip(&rq);
	cr_assert_not(out->release->has_lease_id);
	cr_assert(out->release->has_request_id);
	cr_assert_eq(out->release->request_id, 77);
}

Test(codec, ping_round_trips_binary_payload)
{
	static const uint8_t pl[] = {0, 1, 0xff, 0, 0x80, 'a'};
	Arbiter__Request rq = ARBITER__REQUEST__INIT;
	Arbiter__Ping p = ARBITER__PING__INIT;
	Arbiter__Request *out;

	p.has_payload = 1;
	p.payload = bin(pl, sizeof pl);
	rq.id = 4;
	rq.kind_case = ARBITER__REQUEST__KIND_PING;
	rq.ping = &p;
	out = roundtrip(&rq);
	assert_bin_eq(out->ping->payload, pl, sizeof pl);

	p.has_payload = 0;
	out = roundtrip(&rq);
	cr_assert_not(out->ping->has_payload);
}

Test(codec, renew_round_trips)
{
	Arbiter__Request rq = ARBITER__REQUEST__INIT;
	Arbiter__Renew r = ARBITER__RENEW__INIT;
	Arbiter__Request *out;

	r.lease_id = 99;
	rq.id = 5;
	rq.kind_case = ARBITER__REQUEST__KIND_RENEW;
	rq.renew = &r;
	out = roundtrip(&rq);
	cr_assert_eq(out->renew->lease_id, 99);
	cr_assert_not(out->renew->has_ttl_ms);
	r.has_ttl_ms = 1;
	r.ttl_ms = 5000;
	out = roundtrip(&rq);
	cr_assert(out->renew->has_ttl_ms);
	cr_assert_eq(out->renew->ttl_ms, 5000);
}

Test(codec, stats_and_status_requests_round_trip)
{
	Arbiter__Request rq = ARBITER__REQUEST__INIT;
	Arbiter__StatsRequest s = ARBITER__STATS_REQUEST__INIT;
	Arbiter__StatusRequest st = ARBITER__STATUS_REQUEST__INIT;
	Arbiter__Request *out;

	rq.id = 6;
	rq.kind_case = ARBITER__REQUEST__KIND_STATS;
	rq.stats = &s;
	out = roundtrip(&rq);
	cr_assert_not(out->stats->has_resource);
	s.has_resource = 1;
	s.resource = bin("db", 2);
	out = roundtrip(&rq);
	assert_bin_eq(out->stats->resource, "db", 2);

	rq.kind_case = ARBITER__REQUEST__KIND_STATUS;
	rq.status = &st;
	out = roundtrip(&rq);
	cr_assert_not(out->status->has_resource);
	st.has_resource = 1;
	st.resource = bin("queue", 5);
	out = roundtrip(&rq);
	assert_bin_eq(out->status->resource, "queue", 5);
}

Test(codec, revoke_round_trips_by_lease_or_pid)
{
	Arbiter__Request rq = ARBITER__REQUEST__INIT;
	Arbiter__Revoke r = ARBITER__REVOKE__INIT;
	Arbiter__Request *out;

	r.has_lease_id = 1;
	r.lease_id = 8;
	rq.id = 7;
	rq.kind_case = ARBITER__REQUEST__KIND_REVOKE;
	rq.revoke = &r;
	out = roundtrip(&rq);
	cr_assert(out->revoke->has_lease_id);
	cr_assert_eq(out->revoke->lease_id, 8);
	cr_assert_not(out->revoke->has_pid);
	r.has_lease_id = 0;
	r.has_pid = 1;
	r.pid = 4194304;
	out = roundtrip(&rq);
	cr_assert(out->revoke->has_pid);
	cr_assert_eq(out->revoke->pid, 4194304);
}

Test(codec, stats_reset_round_trips)
{
	Arbiter__Request rq = ARBITER__REQUEST__INIT;
	Arbiter__StatsReset s = ARBITER__STATS_RESET__INIT;
	Arbiter__Request *out;

	rq.id = 8;
	rq.kind_case = ARBITER__REQUEST__KIND_STATS_RESET;
	rq.stats_reset = &s;
	out = roundtrip(&rq);
	cr_assert_not_null(out->stats_reset);
}

Test(codec, request_without_kind_round_trips_as_not_set)
{
	Arbiter__Request rq = ARBITER__REQUEST__INIT;

	rq.id = 9;
	cr_assert_eq(roundtrip(&rq)->kind_case,
		     ARBITER__REQUEST__KIND__NOT_SET);
}

Test(codec, server_messages_round_trip)
{
	Arbiter__ServerMessage sm = ARBITER__SERVER_MESSAGE__INIT;
	Arbiter__Granted g = ARBITER__GRANTED__INIT;
	Arbiter__Queued q = ARBITER__QUEUED__INIT;
	Arbiter__Error e = ARBITER__ERROR__INIT;
	Arbiter__Welcome w = ARBITER__WELCOME__INIT;
	Arbiter__Limits lim = ARBITER__LIMITS__INIT;
	Arbiter__ServerMessage *out;

	sm.has_id = 1;
	sm.id = 11;
	sm.kind_case = ARBITER__SERVER_MESSAGE__KIND_GRANTED;
	sm.granted = &g;
	g.lease_id = 5;
	g.token = UINT64_MAX - 1;
	g.resource = "db";
	out = roundtrip_server(&sm);
	cr_assert_eq(out->id, 11);
	cr_assert_eq(out->granted->lease_id, 5);
	cr_assert_eq(out->granted->token, UINT64_MAX - 1);
	cr_assert_str_eq(out->granted->resource, "db");

	sm.has_id = 0;
	sm.kind_case = ARBITER__SERVER_MESSAGE__KIND_QUEUED;
	sm.queued = &q;
	q.lease_id = 6;
	q.has_position = 1;
	q.position = 3;
	q.holder_name = "worker";
	out = roundtrip_server(&sm);
	cr_assert_eq(out->queued->position, 3);
	cr_assert_str_eq(out->queued->holder_name, "worker");

	sm.kind_case = ARBITER__SERVER_MESSAGE__KIND_ERROR;
	sm.error = &e;
	e.code = ARBITER__ERROR_CODE__WOULD_BLOCK;
	e.message = "resource \"db\" is held";
	out = roundtrip_server(&sm);
	cr_assert_eq(out->error->code, ARBITER__ERROR_CODE__WOULD_BLOCK);
	cr_assert_str_eq(out->error->message, "resource \"db\" is held");

	sm.kind_case = ARBITER__SERVER_MESSAGE__KIND_WELCOME;
	sm.welcome = &w;
	w.protocol_version = ARB_PROTOCOL_VERSION;
	w.server_version = "0.1.0";
	w.limits = &lim;
	lim.has_max_frame_bytes = 1;
	lim.max_frame_bytes = 65536;
	out = roundtrip_server(&sm);
	cr_assert_str_eq(out->welcome->server_version, "0.1.0");
	cr_assert_not_null(out->welcome->limits);
	cr_assert_eq(out->welcome->limits->max_frame_bytes, 65536);
}

/* ------------------------------------------------------------ bad input */

/* One request of each kind, built into caller storage. */
struct all_kinds {
	Arbiter__Hello hello;
	Arbiter__Acquire acquire;
	Arbiter__Release release;
	Arbiter__Ping ping;
	Arbiter__Renew renew;
	Arbiter__StatsRequest stats;
	Arbiter__StatusRequest status;
	Arbiter__Revoke revoke;
	Arbiter__StatsReset stats_reset;
};

static const Arbiter__Request__KindCase kinds[] = {
    ARBITER__REQUEST__KIND_HELLO,	ARBITER__REQUEST__KIND_ACQUIRE,
    ARBITER__REQUEST__KIND_RELEASE,	ARBITER__REQUEST__KIND_PING,
    ARBITER__REQUEST__KIND_RENEW,	ARBITER__REQUEST__KIND_STATS,
    ARBITER__REQUEST__KIND_STATUS,	ARBITER__REQUEST__KIND_REVOKE,
    ARBITER__REQUEST__KIND_STATS_RESET,
};
#define NKINDS (sizeof kinds / sizeof kinds[0])

static void
build_kind(Arbiter__Request *rq, struct all_kinds *k,
	   Arbiter__Request__KindCase kind, uint64_t id)
{
	Arbiter__Request init = ARBITER__REQUEST__INIT;

	*rq = init;
	rq->id = id;
	rq->kind_case = kind;
	switch (kind) {
	case ARBITER__REQUEST__KIND_HELLO:
		arbiter__hello__init(&k->hello);
		k->hello.protocol_version = 1;
		k->hello.has_client_name = 1;
		k->hello.client_name = bin("cli", 3);
		rq->hello = &k->hello;
		break;
	case ARBITER__REQUEST__KIND_ACQUIRE:
		arbiter__acquire__init(&k->acquire);
		k->acquire.resource = bin("resource-name", 13);
		k->acquire.has_timeout_ms = 1;
		k->acquire.timeout_ms = 1500;
		k->acquire.has_ttl_ms = 1;
		k->acquire.ttl_ms = 300000;
		rq->acquire = &k->acquire;
		break;
	case ARBITER__REQUEST__KIND_RELEASE:
		arbiter__release__init(&k->release);
		k->release.has_lease_id = 1;
		k->release.lease_id = 1u << 30;
		rq->release = &k->release;
		break;
	case ARBITER__REQUEST__KIND_PING:
		arbiter__ping__init(&k->ping);
		k->ping.has_payload = 1;
		k->ping.payload = bin("pingpong", 8);
		rq->ping = &k->ping;
		break;
	case ARBITER__REQUEST__KIND_RENEW:
		arbiter__renew__init(&k->renew);
		k->renew.lease_id = 300;
		k->renew.has_ttl_ms = 1;
		k->renew.ttl_ms = 1000;
		rq->renew = &k->renew;
		break;
	case ARBITER__REQUEST__KIND_STATS:
		arbiter__stats_request__init(&k->stats);
		k->stats.has_resource = 1;
		k->stats.resource = bin("db", 2);
		rq->stats = &k->stats;
		break;
	case ARBITER__REQUEST__KIND_STATUS:
		arbiter__status_request__init(&k->status);
		rq->status = &k->status;
		break;
	case ARBITER__REQUEST__KIND_REVOKE:
		arbiter__revoke__init(&k->revoke);
		k->revoke.has_pid = 1;
		k->revoke.pid = 31337;
		rq->revoke = &k->revoke;
		break;
	case ARBITER__REQUEST__KIND_STATS_RESET:
		arbiter__stats_reset__init(&k->stats_reset);
		rq->stats_reset = &k->stats_reset;
		break;
	default:
		cr_assert_fail("unknown kind %d", kind);
	}
}

/* Bytes a varint of v takes. */
static size_t
varint_len(uint64_t v)
{
	size_t n = 1;

	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static size_t
put_varint(uint8_t *out, uint64_t v)
{
	size_t n = 0;

	while (v >= 0x80) {
		out[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	out[n++] = (uint8_t)v;
	return n;
}

/*
 * A Request is its id field, then one length-delimited kind. Cut anywhere
 * but right after the id, the payload is broken and must not decode; cut
 * right after the id it is a valid request with no kind.
 */
Test(codec, truncated_payloads_of_every_kind_fail_to_decode)
{
	for (size_t k = 0; k < NKINDS; k++) {
		struct all_kinds st;
		Arbiter__Request rq;
		size_t flen, n, idlen;
		const uint8_t *p;
		uint8_t *copy;

		build_kind(&rq, &st, kinds[k], 1000 + k);
		flen = pack_frame(&rq.base);
		p = payload_of(flen, &n);
		idlen = 1 + varint_len(rq.id);
		cr_assert_gt(n, idlen + 1);
		for (size_t cut = 0; cut < n; cut++) {
			Arbiter__Request *out;

			/* An exact-size copy, so an over-read shows up in
			 * the sanitizers and valgrind. */
			copy = malloc(cut ? cut : 1);
			cr_assert_not_null(copy);
			memcpy(copy, p, cut);
			codec_arena_reset(&arena);
			out = codec_unpack_request(&arena, copy, cut);
			free(copy);
			if (cut == idlen) {
				cr_assert_not_null(out);
				cr_assert_eq(out->kind_case,
					     ARBITER__REQUEST__KIND__NOT_SET);
			} else {
				cr_assert_null(out,
					       "kind %d cut at %zu of %zu "
					       "bytes decoded",
					       kinds[k], cut, n);
			}
		}
	}
}

Test(codec, missing_required_fields_fail_to_decode)
{
	/* Ping {} with no request id (field 1 is required). */
	static const uint8_t no_id[] = {0x6a, 0x00};
	/* id 1, Acquire {} without its required resource. */
	static const uint8_t no_resource[] = {0x08, 0x01, 0x5a, 0x00};
	/* id 1, Hello {} without protocol_version. */
	static const uint8_t no_version[] = {0x08, 0x01, 0x52, 0x00};
	/* id 1, Renew {} without lease_id. */
	static const uint8_t no_lease[] = {0x08, 0x01, 0x72, 0x00};
	/* A good one for comparison: id 1, Ping {}. */
	static const uint8_t good[] = {0x08, 0x01, 0x6a, 0x00};
	Arbiter__Request *out;

	cr_assert_null(codec_unpack_request(&arena, no_id, sizeof no_id));
	cr_assert_null(
	    codec_unpack_request(&arena, no_resource, sizeof no_resource));
	cr_assert_null(
	    codec_unpack_request(&arena, no_version, sizeof no_version));
	cr_assert_null(codec_unpack_request(&arena, no_lease, sizeof no_lease));
	codec_arena_reset(&arena);
	out = codec_unpack_request(&arena, good, sizeof good);
	cr_assert_not_null(out);
	cr_assert_eq(out->kind_case, ARBITER__REQUEST__KIND_PING);
}

Test(codec, garbage_bytes_fail_to_decode)
{
	static const struct {
		const char *what;
		uint8_t b[12];
		size_t n;
	} bad[] = {
	    {"all ones", {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 6},
	    {"wire type 7", {0x0f, 0x01}, 2},
	    {"wire type 6", {0x0e, 0x01}, 2},
	    {"field number 0", {0x00, 0x01}, 2},
	    {"truncated varint", {0x08, 0x80}, 2},
	    {"eleven-byte varint",
	     {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	      0x01},
	     12},
	    {"length past the end", {0x08, 0x01, 0x5a, 0x7f, 0x0a}, 5},
	    {"huge length",
	     {0x08, 0x01, 0x5a, 0xff, 0xff, 0xff, 0xff, 0x0f},
	     8},
	    {"id as length-delimited", {0x0a, 0x01, 0x00}, 3},
	    {"text admin line", {'s', 't', 'a', 't', 's', '\n'}, 6},
	    {"acquire with a varint body", {0x08, 0x01, 0x58, 0x01}, 4},
	    {"unterminated group", {0x08, 0x01, 0x0b}, 3},
	};

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		uint8_t *copy = malloc(bad[i].n);

		cr_assert_not_null(copy);
		memcpy(copy, bad[i].b, bad[i].n);
		codec_arena_reset(&arena);
		cr_assert_null(codec_unpack_request(&arena, copy, bad[i].n),
			       "%s decoded", bad[i].what);
		codec_arena_reset(&arena);
		cr_assert_null(codec_unpack_server(&arena, copy, bad[i].n),
			       "%s decoded as a server message", bad[i].what);
		free(copy);
	}
}

static uint64_t
rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Random bytes and bit-flipped good requests: never a crash, never past
 * the arena, and whatever decodes packs again. */
Test(codec, random_and_mutated_bytes_never_escape_the_arena)
{
	uint64_t seed = 42;
	struct codec_arena small;

	codec_arena_init(&small, 2048);
	for (int iter = 0; iter < 20000; iter++) {
		uint8_t buf[96];
		size_t n;
		Arbiter__Request *out;

		if (iter % 2) {
			struct all_kinds st;
			Arbiter__Request rq;
			size_t flen, plen;
			const uint8_t *p;

			build_kind(&rq, &st, kinds[rnd(&seed) % NKINDS],
				   rnd(&seed) % 100000);
			flen = pack_frame(&rq.base);
			p = payload_of(flen, &plen);
			cr_assert_leq(plen, sizeof buf);
			memcpy(buf, p, plen);
			n = plen;
			for (int f = 0; f < 1 + (int)(rnd(&seed) % 3); f++)
				buf[rnd(&seed) % n] ^=
				    (uint8_t)(1u << (rnd(&seed) % 8));
		} else {
			n = 1 + rnd(&seed) % sizeof buf;
			for (size_t i = 0; i < n; i++)
				buf[i] = (uint8_t)rnd(&seed);
		}
		codec_arena_reset(&small);
		out = codec_unpack_request(&small, buf, n);
		cr_assert_leq(small.used, small.cap);
		if (out != NULL) {
			size_t again =
			    protobuf_c_message_get_packed_size(&out->base);

			cr_assert_leq(again, 2 * n + 16);
		}
		codec_arena_reset(&small);
		(void)codec_unpack_server(&small, buf, n);
		cr_assert_leq(small.used, small.cap);
	}
	codec_arena_free(&small);
}

/* ------------------------------------------------------------ the arena */

Test(codec, message_needing_more_than_the_arena_fails_instead_of_allocating)
{
	static uint8_t name[4000];
	Arbiter__Request rq = ARBITER__REQUEST__INIT;
	Arbiter__Acquire a = ARBITER__ACQUIRE__INIT;
	struct codec_arena tiny;
	size_t flen, n;
	const uint8_t *p;

	memset(name, 'n', sizeof name);
	a.resource = bin(name, sizeof name);
	rq.id = 1;
	rq.kind_case = ARBITER__REQUEST__KIND_ACQUIRE;
	rq.acquire = &a;
	flen = pack_frame(&rq.base);
	p = payload_of(flen, &n);

	codec_arena_init(&tiny, 1024);
	cr_assert_null(codec_unpack_request(&tiny, p, n),
		       "a 4000-byte name does not fit a 1 KiB arena");
	cr_assert_leq(tiny.used, tiny.cap);
	codec_arena_free(&tiny);

	codec_arena_init(&tiny, 64);
	cr_assert_null(codec_unpack_request(&tiny, p, n));
	cr_assert_leq(tiny.used, tiny.cap);
	codec_arena_free(&tiny);

	/* The same payload fits the big arena. */
	codec_arena_reset(&arena);
	cr_assert_not_null(codec_unpack_request(&arena, p, n));
}

Test(codec, arena_of_exactly_the_needed_size_suffices)
{
	struct all_kinds st;
	Arbiter__Request rq;

	for (size_t k = 0; k < NKINDS; k++) {
		size_t flen, n, need;
		const uint8_t *p;
		struct codec_arena exact;

		build_kind(&rq, &st, kinds[k], 77);
		flen = pack_frame(&rq.base);
		p = payload_of(flen, &n);
		codec_arena_reset(&arena);
		cr_assert_not_null(codec_unpack_request(&arena, p, n));
		need = arena.used;

		codec_arena_init(&exact, need);
		cr_assert_not_null(codec_unpack_request(&exact, p, n),
				   "kind %d: %zu bytes are enough", kinds[k],
				   need);
		cr_assert_eq(exact.used, need);
		codec_arena_free(&exact);

		codec_arena_init(&exact, need - 1);
		cr_assert_null(codec_unpack_request(&exact, p, n),
			       "kind %d: one byte short must fail", kinds[k]);
		cr_assert_leq(exact.used, exact.cap);
		codec_arena_free(&exact);
	}
}

Test(codec, zero_sized_arena_decodes_nothing)
{
	static const uint8_t good[] = {0x08, 0x01, 0x6a, 0x00};
	struct codec_arena none;

	codec_arena_init(&none, 0);
	cr_assert_null(codec_unpack_request(&none, good, sizeof good));
	codec_arena_free(&none);
}

Test(codec, arena_fills_up_without_reset_and_works_again_after_it)
{
	static const uint8_t good[] = {0x08, 0x01, 0x6a, 0x00};
	struct codec_arena a;
	int decoded = 0;

	codec_arena_init(&a, 1024);
	while (codec_unpack_request(&a, good, sizeof good) != NULL) {
		decoded++;
		cr_assert_lt(decoded, 1024, "the arena never ran out");
	}
	cr_assert_gt(decoded, 0);
	cr_assert_leq(a.used, a.cap);
	codec_arena_reset(&a);
	cr_assert_eq(a.used, 0);
	cr_assert_not_null(codec_unpack_request(&a, good, sizeof good));
	codec_arena_free(&a);
	codec_arena_free(&a); /* twice is harmless */
	cr_assert_null(a.buf);
}

Test(codec, unpacked_fields_are_aligned)
{
	struct all_kinds st;
	Arbiter__Request rq, *out;

	build_kind(&rq, &st, ARBITER__REQUEST__KIND_ACQUIRE, 5);
	out = roundtrip(&rq);
	cr_assert_eq((uintptr_t)out % 8, 0);
	cr_assert_eq((uintptr_t)out->acquire % 8, 0);
}

/* Status { resources: [ ResourceStatus { holders: [Holder x n] } ] } */
static Arbiter__ServerMessage *
status_with_holders(size_t nholders, Arbiter__Holder ***hold)
{
	static Arbiter__ServerMessage sm;
	static Arbiter__Status status;
	static Arbiter__ResourceStatus rs;
	static Arbiter__ResourceStatus *rsp;
	Arbiter__ServerMessage sm_init = ARBITER__SERVER_MESSAGE__INIT;
	Arbiter__Holder **h = calloc(nholders, sizeof *h);

	cr_assert_not_null(h);
	for (size_t i = 0; i < nholders; i++) {
		h[i] = malloc(sizeof *h[i]);
		cr_assert_not_null(h[i]);
		arbiter__holder__init(h[i]);
		h[i]->has_lease_id = 1;
		h[i]->lease_id = i + 1;
		h[i]->has_pid = 1;
		h[i]->pid = (uint32_t)(1000 + i);
		h[i]->client_name = "worker";
	}
	arbiter__resource_status__init(&rs);
	rs.resource = "db";
	rs.n_holders = nholders;
	rs.holders = h;
	rsp = &rs;
	arbiter__status__init(&status);
	status.n_resources = 1;
	status.resources = &rsp;
	sm = sm_init;
	sm.kind_case = ARBITER__SERVER_MESSAGE__KIND_STATUS;
	sm.status = &status;
	*hold = h;
	return &sm;
}

static void
free_holders(Arbiter__Holder **h, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(h[i]);
	free(h);
}

Test(codec, many_repeated_holders_against_a_small_arena_fail_cleanly)
{
	enum { N = 2000 };
	Arbiter__Holder **h;
	Arbiter__ServerMessage *sm = status_with_holders(N, &h);
	size_t flen = pack_frame(&sm->base), n;
	const uint8_t *p = payload_of(flen, &n);
	struct codec_arena small, big;
	Arbiter__ServerMessage *out;

	codec_arena_init(&small, 16 * 1024);
	cr_assert_null(codec_unpack_server(&small, p, n),
		       "%d holders do not fit 16 KiB", N);
	cr_assert_leq(small.used, small.cap);
	codec_arena_free(&small);

	codec_arena_init(&big, 4 * 1024 * 1024);
	out = codec_unpack_server(&big, p, n);
	cr_assert_not_null(out);
	cr_assert_eq(out->status->n_resources, 1);
	cr_assert_eq(out->status->resources[0]->n_holders, N);
	cr_assert_eq(out->status->resources[0]->holders[N - 1]->pid,
		     1000 + N - 1);
	cr_assert_str_eq(out->status->resources[0]->holders[7]->client_name,
			 "worker");
	codec_arena_free(&big);
	free_holders(h, N);
}

/*
 * The attack the arena exists for: each empty Holder is two bytes on the
 * wire but a whole struct (and a pointer) in memory, so a small frame asks
 * for a large allocation. It must fail inside the arena.
 */
Test(codec, empty_repeated_entries_cannot_amplify_memory)
{
	enum { N = 20000 };
	size_t inner = 2 * N, n = 0;
	uint8_t *buf = malloc(inner + 32);
	size_t rs_len, st_len;
	struct codec_arena a;

	cr_assert_not_null(buf);
	/* ServerMessage.status (16) { Status.resources (1) {
	 *   ResourceStatus.holders (2) {} x N } } */
	rs_len = inner;
	st_len = 1 + varint_len(rs_len) + rs_len;
	buf[n++] = 0x82; /* field 16, wire type 2 */
	buf[n++] = 0x01;
	n += put_varint(buf + n, st_len);
	buf[n++] = 0x0a; /* Status.resources: field 1, wire type 2 */
	n += put_varint(buf + n, rs_len);
	for (int i = 0; i < N; i++) {
		buf[n++] = 0x12; /* ResourceStatus.holders, field 2 */
		buf[n++] = 0x00;
	}
	cr_assert_lt(n, 48 * 1024, "the frame itself is small");

	codec_arena_init(&a, ARENA_CAP);
	cr_assert_null(codec_unpack_server(&a, buf, n),
		       "%d empty holders need far more than %d bytes", N,
		       ARENA_CAP);
	cr_assert_leq(a.used, a.cap);
	codec_arena_free(&a);

	/* With room enough it is a valid message: the bytes were right. */
	codec_arena_init(&a, 8 * 1024 * 1024);
	{
		Arbiter__ServerMessage *out = codec_unpack_server(&a, buf, n);

		cr_assert_not_null(out);
		cr_assert_eq(out->status->resources[0]->n_holders, N);
	}
	codec_arena_free(&a);
	free(buf);
}

Test(codec, frame_size_is_header_plus_packed_size)
{
	struct all_kinds st;
	Arbiter__Request rq;

	for (size_t k = 0; k < NKINDS; k++) {
		build_kind(&rq, &st, kinds[k], k);
		cr_assert_eq(codec_frame_size(&rq.base),
			     FRAME_HEADER +
				 protobuf_c_message_get_packed_size(&rq.base));
		cr_assert_eq(pack_frame(&rq.base), codec_frame_size(&rq.base));
		cr_assert_eq(packed[0], 0);
	}
}

/* ------------------------------------------------------------ names */

/* Check a name held in an exact-size heap copy (no NUL after it). */
static const char *
check_exact(const char *s, size_t len)
{
	char *copy = malloc(len ? len : 1);
	const char *why;

	cr_assert_not_null(copy);
	memcpy(copy, s, len);
	why = codec_check_name(copy, len);
	free(copy);
	return why;
}

#define NAME_OK(lit)                                                           \
	cr_assert_null(check_exact(lit, sizeof(lit) - 1), "%s refused: %s",    \
		       #lit, check_exact(lit, sizeof(lit) - 1))
#define NAME_BAD(lit)                                                          \
	cr_assert_not_null(check_exact(lit, sizeof(lit) - 1), "%s accepted",   \
			   #lit)

Test(codec, name_empty_is_refused)
{
	const char *why = codec_check_name("", 0);

	cr_assert_not_null(why);
	cr_assert_not_null(strstr(why, "empty"));
	cr_assert_not_null(codec_check_name(NULL, 0));
	cr_assert_not_null(codec_check_name(NULL, 5));
}

Test(codec, name_length_limit_is_255_bytes)
{
	char buf[300];
	const char *why;

	memset(buf, 'a', sizeof buf);
	cr_assert_null(check_exact(buf, 1));
	cr_assert_null(check_exact(buf, 255));
	why = check_exact(buf, 256);
	cr_assert_not_null(why);
	cr_assert_not_null(strstr(why, "255"), "the message names the limit");
	cr_assert_not_null(check_exact(buf, sizeof buf));
}

Test(codec, name_of_255_bytes_of_multibyte_characters_is_fine)
{
	char buf[260];

	for (int i = 0; i < 85; i++)
		memcpy(buf + 3 * i, "\xe2\x82\xac", 3); /* € */
	cr_assert_null(check_exact(buf, 255));
	memcpy(buf + 255, "\xc3\xa9", 2); /* é makes it 257 */
	cr_assert_not_null(check_exact(buf, 257));
}

Test(codec, name_with_control_characters_is_refused)
{
	NAME_BAD("a\x01");
	NAME_BAD("tab\there");
	NAME_BAD("line\n");
	NAME_BAD("\r");
	NAME_BAD("\x1b[31m");
	NAME_BAD("x\x1f");
	NAME_BAD("nul\0inside");
	NAME_BAD("\0");
	NAME_OK(" ");
	NAME_OK("a b");
	NAME_OK("~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./");
}

Test(codec, name_with_del_is_refused)
{
	NAME_BAD("\x7f");
	NAME_BAD("abc\x7f");
}

Test(codec, name_with_c1_controls_is_refused)
{
	NAME_BAD("\xc2\x80");  /* U+0080 */
	NAME_BAD("a\xc2\x85"); /* U+0085 NEL */
	NAME_BAD("\xc2\x9f");  /* U+009F */
	NAME_OK("\xc2\xa0");   /* U+00A0, the first after C1 */
	NAME_OK("\xc2\xbf");
}

Test(codec, name_with_invalid_utf8_is_refused)
{
	NAME_BAD("\x80");		  /* lone continuation */
	NAME_BAD("a\xbf");		  /* lone continuation */
	NAME_BAD("\xc3\x28");		  /* bad continuation */
	NAME_BAD("\xe2\x28\xa1");	  /* bad continuation */
	NAME_BAD("\xe2\x82\x28");	  /* bad last continuation */
	NAME_BAD("\xf0\x28\x8c\xbc");	  /* bad continuation */
	NAME_BAD("ab\xc3");		  /* truncated at the end */
	NAME_BAD("\xe2\x82");		  /* truncated at the end */
	NAME_BAD("\xf0\x9f\x98");	  /* truncated at the end */
	NAME_BAD("\xf5\x80\x80\x80");	  /* lead byte F5 */
	NAME_BAD("\xf8\x88\x80\x80\x80"); /* five-byte form */
	NAME_BAD("\xfe");
	NAME_BAD("\xff");
	NAME_BAD("\xf4\x90\x80\x80"); /* U+110000 */
}

Test(codec, name_with_overlong_encoding_is_refused)
{
	NAME_BAD("\xc0\x80");	      /* NUL in two bytes */
	NAME_BAD("\xc0\xaf");	      /* '/' in two bytes */
	NAME_BAD("\xc1\xbf");	      /* U+007F in two bytes */
	NAME_BAD("\xe0\x80\x80");     /* NUL in three bytes */
	NAME_BAD("\xe0\x80\xaf");     /* '/' in three bytes */
	NAME_BAD("\xe0\x9f\xbf");     /* U+07FF in three bytes */
	NAME_BAD("\xf0\x80\x80\x80"); /* NUL in four bytes */
	NAME_BAD("\xf0\x8f\xbf\xbf"); /* U+FFFF in four bytes */
	NAME_OK("\xe0\xa0\x80");      /* U+0800, the shortest form */
	NAME_OK("\xf0\x90\x80\x80");  /* U+10000, the shortest form */
}

Test(codec, name_with_surrogates_is_refused)
{
	NAME_BAD("\xed\xa0\x80");	      /* U+D800 */
	NAME_BAD("\xed\xbf\xbf");	      /* U+DFFF */
	NAME_BAD("\xed\xa0\xbd\xed\xb8\x80"); /* CESU-8 pair for U+1F600 */
	NAME_OK("\xed\x9f\xbf");	      /* U+D7FF */
	NAME_OK("\xee\x80\x80");	      /* U+E000 */
}

Test(codec, name_with_valid_multibyte_characters_is_fine)
{
	NAME_OK("caf\xc3\xa9");			     /* café */
	NAME_OK("\xe2\x82\xac");		     /* € */
	NAME_OK("\xe6\x97\xa5\xe6\x9c\xac");	     /* 日本 */
	NAME_OK("\xd0\xb1\xd0\xb0\xd0\xb7\xd0\xb0"); /* база */
	NAME_OK("\xf0\x9f\x98\x80");		     /* U+1F600 */
	NAME_OK("\xef\xbf\xbd");		     /* U+FFFD */
	NAME_OK("\xf4\x8f\xbf\xbf");		     /* U+10FFFF */
	NAME_OK("qdrant/collections/\xc3\xa9t\xc3\xa9");
}

Test(codec, printable_utf8_reads_only_the_given_length)
{
	/* The byte after the length would complete the sequence; it must
	 * not be looked at. */
	static const char s[] = "a\xc3\xa9";

	cr_assert_eq(codec_printable_utf8(s, 2), 0);
	cr_assert_eq(codec_printable_utf8(s, 3), 1);
	cr_assert_eq(codec_printable_utf8(s, 0), 1);
	cr_assert_eq(codec_printable_utf8("\x01", 1), 0);
}

/* ------------------------------------------------------------ error names */

Test(codec, error_names_match_the_proto_enum)
{
	cr_assert_str_eq(codec_error_name(0), "ERROR_UNSPECIFIED");
	cr_assert_str_eq(codec_error_name(ARBITER__ERROR_CODE__BAD_FRAME),
			 "BAD_FRAME");
	cr_assert_str_eq(codec_error_name(ARBITER__ERROR_CODE__INVALID_NAME),
			 "INVALID_NAME");
	cr_assert_str_eq(codec_error_name(ARBITER__ERROR_CODE__ALREADY_HELD),
			 "ALREADY_HELD");
	cr_assert_str_eq(codec_error_name(ARBITER__ERROR_CODE__WOULD_BLOCK),
			 "WOULD_BLOCK");
	cr_assert_str_eq(codec_error_name(ARBITER__ERROR_CODE__TIMEOUT),
			 "TIMEOUT");
	cr_assert_str_eq(codec_error_name(ARBITER__ERROR_CODE__LIMIT), "LIMIT");
	cr_assert_str_eq(codec_error_name(ARBITER__ERROR_CODE__CANCELLED),
			 "CANCELLED");
}

Test(codec, every_error_code_has_its_own_name)
{
	const ProtobufCEnumDescriptor *d = &arbiter__error_code__descriptor;

	cr_assert_geq(d->n_values, 16);
	for (unsigned i = 0; i < d->n_values; i++) {
		const char *name = codec_error_name(d->values[i].value);

		cr_assert_str_eq(name, d->values[i].name);
		for (unsigned j = 0; j < i; j++)
			cr_assert_str_neq(name, d->values[j].name);
	}
}

Test(codec, unknown_error_codes_are_named_unknown)
{
	cr_assert_str_eq(codec_error_name(-1), "UNKNOWN");
	cr_assert_str_eq(codec_error_name(97), "UNKNOWN");
	cr_assert_str_eq(codec_error_name(98), "UNKNOWN");
	cr_assert_str_eq(codec_error_name(1 << 30), "UNKNOWN");
}
