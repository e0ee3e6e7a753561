/*
 * Unit tests for the state file's decoder (arbiter/state.c): bytes in,
 * fields or a sentence out. The records are packed here with msgpack-c's
 * packer, as state_write does; the hostile ones are written byte by byte.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <msgpack.h>

#include "state.h"

static msgpack_sbuffer sb;
static msgpack_packer pk;
static struct state_data sd;
static char err[400];

static void
setup(void)
{
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	memset(err, 0, sizeof err);
}

static void
teardown(void)
{
	msgpack_sbuffer_destroy(&sb);
}

TestSuite(state, .init = setup, .fini = teardown);

static void
key(const char *k)
{
	msgpack_pack_str(&pk, strlen(k));
	msgpack_pack_str_body(&pk, k, strlen(k));
}

/* A record as state_write makes it: format, token_hw, two counters. */
static void
pack_valid(uint64_t format, uint64_t hw)
{
	msgpack_pack_map(&pk, 4);
	key("format");
	msgpack_pack_uint64(&pk, format);
	key("token_hw");
	msgpack_pack_uint64(&pk, hw);
	key("counters");
	msgpack_pack_map(&pk, 2);
	key(stats_counter_names[0]);
	msgpack_pack_uint64(&pk, 7);
	key("a-counter-from-a-later-version");
	msgpack_pack_uint64(&pk, 9);
	key("resources");
	msgpack_pack_map(&pk, 1);
	key("db");
	msgpack_pack_uint64(&pk, hw - 1);
}

static int
decode(const void *buf, size_t len)
{
	return state_decode(buf, len, &sd, err, sizeof err);
}

Test(state, a_valid_record_decodes)
{
	pack_valid(STATE_FORMAT, 123456789);
	cr_assert_eq(decode(sb.data, sb.size), 0, "%s", err);
	cr_assert_eq(sd.format, STATE_FORMAT);
	cr_assert_eq(sd.token_hw, 123456789);
	cr_assert(sd.have_counters);
	cr_assert_eq(sd.counters[0], 7);
}

Test(state, every_prefix_of_a_valid_record_is_refused_as_truncated)
{
	pack_valid(STATE_FORMAT, 1ull << 40);
	for (size_t n = 1; n < sb.size; n++) {
		cr_assert_eq(decode(sb.data, n), -EINVAL, "prefix %zu", n);
		cr_assert(strncmp(err, "truncated", 9) == 0, "prefix %zu: %s",
			  n, err);
	}
}

Test(state, trailing_bytes_are_refused)
{
	pack_valid(STATE_FORMAT, 5);
	msgpack_pack_nil(&pk);
	cr_assert_eq(decode(sb.data, sb.size), -EINVAL);
	cr_assert(strstr(err, "1 unexpected bytes") != NULL, "%s", err);
}

Test(state, a_newer_format_is_refused_but_keeps_the_mark)
{
	pack_valid(STATE_FORMAT + 1, 99);
	cr_assert_eq(decode(sb.data, sb.size), -EPROTONOSUPPORT);
	cr_assert_eq(sd.token_hw, 99);
	cr_assert(strstr(err, "newer arbiter") != NULL, "%s", err);
}

Test(state, a_missing_mark_is_refused)
{
	msgpack_pack_map(&pk, 1);
	key("format");
	msgpack_pack_uint64(&pk, STATE_FORMAT);
	cr_assert_eq(decode(sb.data, sb.size), -EINVAL);
	cr_assert_str_eq(err, "missing the \"token_hw\" field");
}

/*
 * Five bytes that declare a map of 2^32-1 entries: msgpack-c would ask for
 * that many entries' memory before it finds the bytes missing. Refused
 * before any allocation, with where and why.
 */
Test(state, a_huge_map_header_is_refused_without_allocating)
{
	static const uint8_t huge[] = {0xdf, 0xff, 0xff, 0xff, 0xff};

	cr_assert_eq(decode(huge, sizeof huge), -EINVAL);
	cr_assert(
	    strstr(err, "at offset 0, 8589934590 elements are declared") !=
		NULL,
	    "%s", err);
}

Test(state, nested_containers_cannot_promise_more_than_the_file_holds)
{
	/* {"a": [array32 of 150 million], ...}: a small file, a big promise */
	static const uint8_t nested[] = {0x81, 0xa1, 'a',  0xdd, 0x08,
					 0xf0, 0xd1, 0x80, 0x01, 0x02};
	static const uint8_t arrays[] = {0x91, 0x91, 0x91, 0xdc, 0xff, 0xff};

	cr_assert_eq(decode(nested, sizeof nested), -EINVAL);
	cr_assert(strstr(err, "at offset 3, ") != NULL, "%s", err);
	cr_assert_eq(decode(arrays, sizeof arrays), -EINVAL);
	cr_assert(strstr(err, "elements are declared") != NULL, "%s", err);
}

Test(state, long_strings_and_blobs_past_the_end_are_truncation)
{
	static const uint8_t str32[] = {0x81, 0xdb, 0x7f, 0xff,
					0xff, 0xff, 'x'};
	static const uint8_t bin32[] = {0x91, 0xc6, 0xff, 0xff, 0xff, 0xff};
	static const uint8_t ext32[] = {0xc9, 0x00, 0x00, 0x01, 0x00, 0x01};

	cr_assert_eq(decode(str32, sizeof str32), -EINVAL);
	cr_assert_str_eq(err, "truncated (the file ends mid-record)");
	cr_assert_eq(decode(bin32, sizeof bin32), -EINVAL);
	cr_assert_str_eq(err, "truncated (the file ends mid-record)");
	cr_assert_eq(decode(ext32, sizeof ext32), -EINVAL);
	cr_assert_str_eq(err, "truncated (the file ends mid-record)");
}

Test(state, the_never_used_byte_is_not_msgpack)
{
	static const uint8_t c1[] = {0x81, 0xc1, 0x00};

	cr_assert_eq(decode(c1, sizeof c1), -EINVAL);
	cr_assert(strstr(err, "(0xc1 at offset 1)") != NULL, "%s", err);
}

/*
 * Every msgpack type the walker skips, nested inside a valid record, so the
 * walk and msgpack-c agree on where each object ends.
 */
Test(state, every_type_is_skipped_in_step_with_msgpack)
{
	static const char blob[300] = {0};

	msgpack_pack_map(&pk, 3);
	key("format");
	msgpack_pack_uint64(&pk, STATE_FORMAT);
	key("token_hw");
	msgpack_pack_uint64(&pk, 42);
	key("later");
	msgpack_pack_array(&pk, 26);
	msgpack_pack_nil(&pk);
	msgpack_pack_true(&pk);
	msgpack_pack_int8(&pk, -5);
	msgpack_pack_int16(&pk, -300);
	msgpack_pack_int32(&pk, -70000);
	msgpack_pack_int64(&pk, -5000000000LL);
	msgpack_pack_uint8(&pk, 200);
	msgpack_pack_uint16(&pk, 60000);
	msgpack_pack_float(&pk, 1.5f);
	msgpack_pack_double(&pk, 2.5);
	msgpack_pack_bin(&pk, sizeof blob);
	msgpack_pack_bin_body(&pk, blob, sizeof blob);
	msgpack_pack_str(&pk, 40);
	msgpack_pack_str_body(&pk, blob, 40);
	msgpack_pack_ext(&pk, 1, 3);
	msgpack_pack_ext_body(&pk, blob, 1);
	msgpack_pack_ext(&pk, 2, 3);
	msgpack_pack_ext_body(&pk, blob, 2);
	msgpack_pack_ext(&pk, 16, 3);
	msgpack_pack_ext_body(&pk, blob, 16);
	msgpack_pack_ext(&pk, 5, 3);
	msgpack_pack_ext_body(&pk, blob, 5);
	msgpack_pack_ext(&pk, 4, 3);
	msgpack_pack_ext_body(&pk, blob, 4);
	msgpack_pack_ext(&pk, 8, 3);
	msgpack_pack_ext_body(&pk, blob, 8);
	msgpack_pack_ext(&pk, 300, 3);
	msgpack_pack_ext_body(&pk, blob, 300);
	msgpack_pack_bin(&pk, 10);
	msgpack_pack_bin_body(&pk, blob, 10);
	msgpack_pack_str(&pk, 300);
	msgpack_pack_str_body(&pk, blob, 300);
	msgpack_pack_uint32(&pk, 70000);
	msgpack_pack_uint64(&pk, UINT64_MAX);
	msgpack_pack_map(&pk, 1);
	msgpack_pack_int(&pk, 1);
	msgpack_pack_array(&pk, 0);
	msgpack_pack_array(&pk, 16);
	for (int i = 0; i < 16; i++)
		msgpack_pack_fix_uint8(&pk, (uint8_t)i);
	msgpack_pack_map(&pk, 16);
	for (int i = 0; i < 16; i++) {
		msgpack_pack_fix_uint8(&pk, (uint8_t)i);
		msgpack_pack_nil(&pk);
	}
	cr_assert_eq(decode(sb.data, sb.size), 0, "%s", err);
	cr_assert_eq(sd.token_hw, 42);
}

/* Random bytes: never a crash, always a sentence when refused. */
Test(state, random_bytes_are_refused_cleanly)
{
	uint8_t buf[64];
	uint32_t x = 2463534242u;

	for (int round = 0; round < 20000; round++) {
		size_t n = 1 + round % sizeof buf;

		for (size_t i = 0; i < n; i++) {
			x ^= x << 13, x ^= x >> 17, x ^= x << 5;
			buf[i] = (uint8_t)x;
		}
		err[0] = '\0';
		if (decode(buf, n) != 0)
			cr_assert(err[0] != '\0', "round %d", round);
	}
}

/* ------------------------------------------------------------ the file */

static char dir[64], path[128], tmp[140];
static struct stats st;

static void
file_setup(void)
{
	setup();
	snprintf(dir, sizeof dir, "/tmp/arbiter-state-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/.arbiter.state", dir);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	stats_init(&st, 10);
}

static void
file_teardown(void)
{
	struct stat sbuf;

	if (lstat(tmp, &sbuf) == 0 && S_ISDIR(sbuf.st_mode))
		rmdir(tmp);
	else
		unlink(tmp);
	if (lstat(path, &sbuf) == 0 && S_ISDIR(sbuf.st_mode))
		rmdir(path);
	else
		unlink(path);
	rmdir(dir);
	stats_free(&st);
	teardown();
}

TestSuite(state_file, .init = file_setup, .fini = file_teardown);

static int
write_mark(uint64_t hw, bool clean)
{
	unsigned fsyncs = 0;

	return state_write(path, hw, clean, -1, &st, &fsyncs, err, sizeof err);
}

Test(state_file, the_clean_mark_round_trips_and_the_file_is_private)
{
	struct stat sbuf;

	cr_assert_eq(write_mark(77, true), 0, "%s", err);
	cr_assert_eq(state_read(path, &sd, err, sizeof err), 0, "%s", err);
	cr_assert_eq(sd.token_hw, 77);
	cr_assert(sd.have_clean && sd.clean);
	cr_assert_eq(write_mark(78, false), 0, "%s", err);
	cr_assert_eq(state_read(path, &sd, err, sizeof err), 0, "%s", err);
	cr_assert(sd.have_clean && !sd.clean);
	cr_assert_eq(lstat(path, &sbuf), 0);
	cr_assert_eq(sbuf.st_mode & 07777, 0600);
}

Test(state_file, a_record_without_the_clean_mark_decodes_as_unknown)
{
	pack_valid(STATE_FORMAT, 5);
	cr_assert_eq(decode(sb.data, sb.size), 0, "%s", err);
	cr_assert(!sd.have_clean);
}

Test(state_file, a_fifo_at_the_temp_name_is_replaced_not_waited_on)
{
	cr_assert_eq(mkfifo(tmp, 0600), 0);
	cr_assert_eq(write_mark(9, false), 0, "%s", err);
	cr_assert_eq(state_read(path, &sd, err, sizeof err), 0, "%s", err);
	cr_assert_eq(sd.token_hw, 9);
}

Test(state_file, a_link_at_the_temp_name_is_replaced_not_followed)
{
	char target[160];
	struct stat sbuf;

	snprintf(target, sizeof target, "%s/target", dir);
	cr_assert_eq(symlink(target, tmp), 0);
	cr_assert_eq(write_mark(9, false), 0, "%s", err);
	cr_assert_neq(lstat(target, &sbuf), 0, "the link was followed");
}

Test(state_file, a_fifo_at_the_state_path_is_refused_without_blocking)
{
	cr_assert_eq(mkfifo(path, 0600), 0);
	cr_assert_eq(state_read(path, &sd, err, sizeof err), -EINVAL);
	cr_assert(strstr(err, "FIFO") != NULL, "%s", err);
	/* A write replaces it with a file. */
	cr_assert_eq(write_mark(3, false), 0, "%s", err);
	cr_assert_eq(state_read(path, &sd, err, sizeof err), 0, "%s", err);
}

Test(state_file, a_folder_at_the_temp_name_is_stepped_around)
{
	cr_assert_eq(mkdir(tmp, 0700), 0);
	cr_assert_eq(write_mark(3, false), 0, "%s", err);
	cr_assert_eq(state_read(path, &sd, err, sizeof err), 0, "%s", err);
	cr_assert_eq(sd.token_hw, 3);
}

Test(state_file, a_folder_at_the_state_path_fails_and_says_what_to_do)
{
	struct stat sbuf;

	cr_assert_eq(mkdir(path, 0700), 0);
	cr_assert_lt(write_mark(3, false), 0);
	cr_assert(strstr(err, path) != NULL && strstr(err, "remove it") != NULL,
		  "%s", err);
	cr_assert_neq(lstat(tmp, &sbuf), 0, "the temp file is left behind");
}
