/*
 * The state file's fields, one wrong type at a time, and what state_read
 * and state_write say about files they cannot use (arbiter/state.c). Each
 * refusal names the field or the reason, since the operator reads it in
 * the daemon's "cannot start" line.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "state.h"
#include "stats.h"

static msgpack_sbuffer sb;
static msgpack_packer pk;
static struct state_data sd;
static char err[1024];
static char dir[64];
static char path[128];
static struct stats st;

static void
setup(void)
{
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	err[0] = '\0';
	snprintf(dir, sizeof dir, "/tmp/arb-state-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/.arbiter.state", dir);
	stats_init(&st, 4);
}

static void
teardown(void)
{
	char cmd[128];

	msgpack_sbuffer_destroy(&sb);
	stats_free(&st);
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	(void)!system(cmd);
}

TestSuite(state_fields, .init = setup, .fini = teardown);

static void
key(const char *k)
{
	msgpack_pack_str(&pk, strlen(k));
	msgpack_pack_str_body(&pk, k, strlen(k));
}

static int
decode(void)
{
	return state_decode((const uint8_t *)sb.data, sb.size, &sd, err,
			    sizeof err);
}

/* A map of format 1 and token_hw 5 with one more key whose value the
 * caller packs next. */
static void
pack_with(const char *extra)
{
	msgpack_pack_map(&pk, 3);
	key("format");
	msgpack_pack_uint64(&pk, 1);
	key("token_hw");
	msgpack_pack_uint64(&pk, 5);
	key(extra);
}

Test(state_fields, a_format_of_zero_or_of_another_type_is_refused)
{
	msgpack_pack_map(&pk, 2);
	key("token_hw");
	msgpack_pack_uint64(&pk, 5);
	key("format");
	msgpack_pack_uint64(&pk, 0);
	cr_assert_eq(decode(), -EINVAL);
	cr_assert_str_eq(err, "bad \"format\" field");

	msgpack_sbuffer_clear(&sb);
	msgpack_pack_map(&pk, 1);
	key("format");
	msgpack_pack_str(&pk, 1);
	msgpack_pack_str_body(&pk, "1", 1);
	cr_assert_eq(decode(), -EINVAL);
	cr_assert_str_eq(err, "bad \"format\" field");
}

Test(state_fields, a_token_mark_that_is_not_a_positive_integer_is_refused)
{
	msgpack_pack_map(&pk, 2);
	key("format");
	msgpack_pack_uint64(&pk, 1);
	key("token_hw");
	msgpack_pack_int64(&pk, -3);
	cr_assert_eq(decode(), -EINVAL);
	cr_assert_str_eq(err, "bad \"token_hw\" field");
}

Test(state_fields, a_clean_mark_that_is_not_a_boolean_is_refused)
{
	pack_with("clean");
	msgpack_pack_uint64(&pk, 1);
	cr_assert_eq(decode(), -EINVAL);
	cr_assert_str_eq(err, "bad \"clean\" field");
}

Test(state_fields, counters_that_are_not_a_map_are_refused)
{
	pack_with("counters");
	msgpack_pack_array(&pk, 0);
	cr_assert_eq(decode(), -EINVAL);
	cr_assert_str_eq(err, "bad \"counters\" field");
}

Test(state_fields, a_counter_that_is_not_a_number_is_skipped)
{
	pack_with("counters");
	msgpack_pack_map(&pk, 2);
	key(stats_counter_names[0]);
	msgpack_pack_str(&pk, 2);
	msgpack_pack_str_body(&pk, "12", 2);
	key(stats_counter_names[1]);
	msgpack_pack_uint64(&pk, 4);
	cr_assert_eq(decode(), 0, "%s", err);
	cr_assert(sd.have_counters);
	cr_assert_eq(sd.counters[0], 0);
	cr_assert_eq(sd.counters[1], 4);
	cr_assert_eq(sd.token_hw, 5);
}

Test(state_fields, a_newer_format_without_a_mark_reports_no_mark)
{
	msgpack_pack_map(&pk, 1);
	key("format");
	msgpack_pack_uint64(&pk, STATE_FORMAT + 1);
	cr_assert_eq(decode(), -EPROTONOSUPPORT);
	cr_assert_eq(sd.token_hw, 0);
	cr_assert_not_null(strstr(err, "by a newer arbiter"), "%s", err);
}

Test(state_fields, a_record_that_is_not_a_map_is_refused)
{
	msgpack_pack_array(&pk, 1);
	msgpack_pack_uint64(&pk, 1);
	cr_assert_eq(decode(), -EINVAL);
	cr_assert_str_eq(err, "the record is not a map");
}

/*
 * open(2) of a socket fails with ENXIO before the file-kind check can run:
 * the operator must still be told that a socket is in the way and to
 * remove it, not "No such device or address".
 */
Test(state_fields, a_socket_at_the_state_path_is_refused_and_named)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	memcpy(a.sun_path, path, strlen(path) + 1);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	cr_assert_lt(state_read(path, &sd, err, sizeof err), 0);
	cr_assert_str_eq(err, "it is a socket, not a regular file; remove it");
	close(fd);
}

Test(state_fields, a_device_at_the_state_path_is_refused_and_named)
{
	if (mknod(path, S_IFCHR | 0600, makedev(1, 3)) < 0)
		cr_skip("making a device node needs root (CAP_MKNOD)");
	cr_assert_lt(state_read(path, &sd, err, sizeof err), 0);
	cr_assert_str_eq(err, "it is a device, not a regular file; remove it");
}

Test(state_fields, a_state_file_over_64_mib_is_refused_unread)
{
	int fd = open(path, O_CREAT | O_WRONLY, 0600);

	cr_assert_eq(ftruncate(fd, (64 << 20) + 1), 0);
	close(fd);
	cr_assert_eq(state_read(path, &sd, err, sizeof err), -EINVAL);
	cr_assert_str_eq(err, "larger than 67108864 bytes");
}

Test(state_fields, a_write_into_a_missing_folder_says_to_check_it)
{
	char bad[160];
	unsigned fsyncs = 0;

	snprintf(bad, sizeof bad, "%s/gone/.arbiter.state", dir);
	cr_assert_eq(
	    state_write(bad, 7, false, -1, &st, &fsyncs, err, sizeof err),
	    -ENOENT);
	cr_assert_not_null(strstr(err, "cannot create the temp file"), "%s",
			   err);
	cr_assert_not_null(strstr(err, "check the storage folder"), "%s", err);
	cr_assert_eq(fsyncs, 0);
}

Test(state_fields, a_state_file_in_a_relative_path_is_written_and_read)
{
	char cwd[4096];
	unsigned fsyncs = 0;

	cr_assert_not_null(getcwd(cwd, sizeof cwd));
	cr_assert_eq(chdir(dir), 0);
	cr_assert_eq(state_write("rel.state", 42, true, -1, &st, &fsyncs, err,
				 sizeof err),
		     0, "%s", err);
	cr_assert_geq(fsyncs, 1);
	cr_assert_eq(state_read("rel.state", &sd, err, sizeof err), 0, "%s",
		     err);
	cr_assert_eq(sd.token_hw, 42);
	cr_assert(sd.clean);
	cr_assert_eq(chdir(cwd), 0);
}

Test(state_fields, a_second_background_write_waits_for_the_first)
{
	struct state_writer w;
	struct pollfd p;

	state_writer_init(&w);
	cr_assert_eq(state_writer_start(&w, path, 9, -1, &st), 0);
	cr_assert_eq(state_writer_start(&w, path, 10, -1, &st), -EBUSY);
	p = (struct pollfd){.fd = w.wake_fd, .events = POLLIN};
	cr_assert_eq(poll(&p, 1, 20000), 1);
	cr_assert_eq(state_writer_finish(&w), 0, "%s", w.err);
	cr_assert_eq(state_read(path, &sd, err, sizeof err), 0, "%s", err);
	cr_assert_eq(sd.token_hw, 9);
	state_writer_free(&w);
}
