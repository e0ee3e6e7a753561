/*
 * state: the msgpack state file (see state.h).
 *
 * Layout: one map with string keys
 *   "format"    uint     STATE_FORMAT
 *   "token_hw"  uint     fencing-token high-water mark
 *   "counters"  map      counter name -> uint (cumulative)
 *   "resources" map      resource name -> last token granted
 *   "written"   uint     unix time of the write, for humans
 *   "clean"     bool     true only when written at a graceful end with no
 *                        lease outstanding: the next holder of the storage
 *                        applies leases.lock_delay_ms when it is false
 * Unknown keys are ignored so a later minor version can add some; a larger
 * "format" is refused, never guessed at.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "state.h"
#include "thread.h"

#define STATE_MAX_BYTES (64u << 20)

static bool
key_is(const msgpack_object *k, const char *s)
{
	size_t n = strlen(s);

	return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
	       memcmp(k->via.str.ptr, s, n) == 0;
}

static uint32_t
be(const uint8_t *p, unsigned n)
{
	uint32_t v = 0;

	for (unsigned i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

/*
 * Walk the record's headers before msgpack-c sees it. msgpack-c allocates a
 * container's elements when it reads the header, so five bytes (df ff ff ff
 * ff) would ask for 4 billion map entries. Every element takes at least one
 * byte, so a record whose headers promise more elements than bytes remain is
 * refused here; what passes allocates at most a few words per input byte.
 * Returns 0, or -EINVAL with err set.
 */
static int
state_prewalk(const uint8_t *buf, size_t len, char *err, size_t errlen)
{
	size_t pos = 0;
	uint64_t pending = 1; /* objects still to read */

	while (pending > 0) {
		uint64_t head, body = 0, kids = 0;
		uint8_t b;

		if (pos >= len)
			goto truncated;
		b = buf[pos];
		if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 ||
		    b == 0xc3) {
			head = 1;
		} else if (b <= 0x8f) {
			head = 1, kids = 2 * (uint64_t)(b & 0x0f);
		} else if (b <= 0x9f) {
			head = 1, kids = b & 0x0f;
		} else if (b <= 0xbf) {
			head = 1, body = b & 0x1f;
		} else if (b == 0xc1) {
			snprintf(err, errlen,
				 "not a msgpack record (0xc1 at offset %zu)",
				 pos);
			return -EINVAL;
		} else {
			/* c4..df: a fixed head, maybe a big-endian length */
			/* clang-format off */
			static const uint8_t hd[] = {
				2, 3, 5,	/* c4-c6 bin 8/16/32 */
				3, 4, 6,	/* c7-c9 ext 8/16/32 */
				5, 9,		/* ca-cb float */
				2, 3, 5, 9,	/* cc-cf uint */
				2, 3, 5, 9,	/* d0-d3 int */
				3, 4, 6, 10, 18, /* d4-d8 fixext */
				2, 3, 5,	/* d9-db str 8/16/32 */
				3, 5,		/* dc-dd array 16/32 */
				3, 5,		/* de-df map 16/32 */
			};
			/* clang-format on */
			unsigned i = b - 0xc4;
			uint32_t n;

			head = hd[i];
			if (len - pos < head)
				goto truncated;
			switch (b) {
			case 0xc4:
			case 0xc5:
			case 0xc6:
			case 0xd9:
			case 0xda:
			case 0xdb:
				body = be(buf + pos + 1, (unsigned)head - 1);
				break;
			case 0xc7:
			case 0xc8:
			case 0xc9: /* then a type byte */
				body = be(buf + pos + 1, (unsigned)head - 2);
				break;
			case 0xdc:
			case 0xdd:
				kids = be(buf + pos + 1, (unsigned)head - 1);
				break;
			case 0xde:
			case 0xdf:
				n = be(buf + pos + 1, (unsigned)head - 1);
				kids = 2 * (uint64_t)n;
				break;
			default:
				break;
			}
		}
		if (len - pos < head || len - pos - head < body)
			goto truncated;
		pos += head + body;
		pending = pending - 1 + kids;
		if (pending > len - pos) {
			snprintf(err, errlen,
				 "truncated or corrupt: at offset %zu, %" PRIu64
				 " elements are declared but only %zu bytes "
				 "follow",
				 pos - head, pending, len - pos);
			return -EINVAL;
		}
	}
	return 0;
truncated:
	snprintf(err, errlen, "truncated (the file ends mid-record)");
	return -EINVAL;
}

int
state_decode(const uint8_t *buf, size_t len, struct state_data *out, char *err,
	     size_t errlen)
{
	msgpack_unpacked u;
	msgpack_unpack_return r;
	size_t off = 0;
	const msgpack_object *root;
	bool have_format = false, have_hw = false;
	int rc = 0;

	memset(out, 0, sizeof *out);
	msgpack_unpacked_init(&u);
	rc = state_prewalk(buf, len, err, errlen);
	if (rc < 0)
		goto out;
	r = msgpack_unpack_next(&u, (const char *)buf, len, &off);
	if (r == MSGPACK_UNPACK_NOMEM_ERROR) {
		snprintf(err, errlen, "out of memory decoding %zu bytes", len);
		rc = -ENOMEM;
		goto out;
	}
	if (r != MSGPACK_UNPACK_SUCCESS) {
		snprintf(err, errlen, "%s",
			 r == MSGPACK_UNPACK_CONTINUE
			     ? "truncated (the file ends mid-record)"
			     : "not a msgpack record");
		rc = -EINVAL;
		goto out;
	}
	if (off != len) {
		snprintf(err, errlen, "%zu unexpected bytes after the record",
			 len - off);
		rc = -EINVAL;
		goto out;
	}
	root = &u.data;
	if (root->type != MSGPACK_OBJECT_MAP) {
		snprintf(err, errlen, "the record is not a map");
		rc = -EINVAL;
		goto out;
	}
	for (uint32_t i = 0; i < root->via.map.size; i++) {
		const msgpack_object *k = &root->via.map.ptr[i].key;
		const msgpack_object *v = &root->via.map.ptr[i].val;

		if (key_is(k, "format")) {
			if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
			    v->via.u64 == 0 || v->via.u64 > UINT32_MAX) {
				snprintf(err, errlen, "bad \"format\" field");
				rc = -EINVAL;
				goto out;
			}
			out->format = (uint32_t)v->via.u64;
			have_format = true;
		} else if (key_is(k, "token_hw")) {
			if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
				snprintf(err, errlen, "bad \"token_hw\" field");
				rc = -EINVAL;
				goto out;
			}
			out->token_hw = v->via.u64;
			have_hw = true;
		} else if (key_is(k, "clean")) {
			if (v->type != MSGPACK_OBJECT_BOOLEAN) {
				snprintf(err, errlen, "bad \"clean\" field");
				rc = -EINVAL;
				goto out;
			}
			out->clean = v->via.boolean;
			out->have_clean = true;
		} else if (key_is(k, "counters")) {
			if (v->type != MSGPACK_OBJECT_MAP) {
				snprintf(err, errlen, "bad \"counters\" field");
				rc = -EINVAL;
				goto out;
			}
			for (uint32_t j = 0; j < v->via.map.size; j++) {
				const msgpack_object *ck =
				    &v->via.map.ptr[j].key;
				const msgpack_object *cv =
				    &v->via.map.ptr[j].val;

				if (cv->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
					continue;
				for (unsigned c = 0; c < STATS_NCOUNTERS; c++) {
					if (key_is(ck, stats_counter_names[c]))
						out->counters[c] = cv->via.u64;
				}
			}
			out->have_counters = true;
		}
	}
	if (have_format && out->format > STATE_FORMAT) {
		snprintf(err, errlen,
			 "written in format %u by a newer arbiter; this one "
			 "reads format %d",
			 out->format, STATE_FORMAT);
		if (!have_hw)
			out->token_hw = 0;
		rc = -EPROTONOSUPPORT;
		goto out;
	}
	if (!have_format || !have_hw) {
		snprintf(err, errlen, "missing the \"%s\" field",
			 have_format ? "token_hw" : "format");
		rc = -EINVAL;
	}
out:
	msgpack_unpacked_destroy(&u);
	return rc;
}

/* What a path that is not a regular file is, for the message. */
static const char *
not_regular(mode_t mode)
{
	return S_ISFIFO(mode)	? "it is a FIFO"
	       : S_ISDIR(mode)	? "it is a folder"
	       : S_ISSOCK(mode) ? "it is a socket"
				: "it is a device";
}

int
state_read(const char *path, struct state_data *out, char *err, size_t errlen)
{
	struct stat st;
	uint8_t *buf;
	ssize_t n;
	size_t got = 0;
	int fd, rc;

	memset(out, 0, sizeof *out);
	/* O_NONBLOCK: a FIFO put here must not hang the daemon in open(2). */
	fd = open(path,
		  O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		rc = -errno;
		if (rc == -ENOENT)
			return rc;
		/* A socket fails open(2) itself (ENXIO): name what is there. */
		if (rc != -ELOOP && lstat(path, &st) == 0 &&
		    !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) {
			snprintf(err, errlen,
				 "%s, not a regular file; remove it",
				 not_regular(st.st_mode));
			return -EINVAL;
		}
		snprintf(err, errlen, "cannot open: %s%s", strerror(-rc),
			 rc == -ELOOP ? " (it is a symbolic link, which "
					"arbiter refuses; remove it)"
				      : "");
		return rc;
	}
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		close(fd);
		snprintf(err, errlen, "cannot examine it: %s", strerror(-rc));
		return rc;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		snprintf(err, errlen, "%s, not a regular file; remove it",
			 not_regular(st.st_mode));
		return -EINVAL;
	}
	if ((size_t)st.st_size > STATE_MAX_BYTES) {
		close(fd);
		snprintf(err, errlen, "larger than %u bytes", STATE_MAX_BYTES);
		return -EINVAL;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		close(fd);
		snprintf(err, errlen, "out of memory reading %lld bytes",
			 (long long)st.st_size);
		return -ENOMEM;
	}
	while (got < (size_t)st.st_size &&
	       (n = read(fd, buf + got, (size_t)st.st_size - got)) > 0)
		got += (size_t)n;
	close(fd);
	if (got == 0) {
		free(buf);
		snprintf(err, errlen, "empty (truncated)");
		return -EINVAL;
	}
	rc = state_decode(buf, got, out, err, errlen);
	free(buf);
	return rc;
}

static void
pack_str(msgpack_packer *pk, const char *s, size_t n)
{
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

/* The record, encoded in the loop: the stats belong to the loop's thread. */
static void
state_encode(msgpack_sbuffer *sb, uint64_t token_hw, bool clean,
	     const struct stats *st)
{
	msgpack_packer pk;
	const struct stats_res *r, *rtmp;
	unsigned ntok = 0;

	msgpack_sbuffer_init(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 6);
	pack_str(&pk, "format", 6);
	msgpack_pack_uint32(&pk, STATE_FORMAT);
	pack_str(&pk, "clean", 5);
	if (clean)
		msgpack_pack_true(&pk);
	else
		msgpack_pack_false(&pk);
	pack_str(&pk, "token_hw", 8);
	msgpack_pack_uint64(&pk, token_hw);
	pack_str(&pk, "written", 7);
	msgpack_pack_uint64(&pk, (uint64_t)time(NULL));
	pack_str(&pk, "counters", 8);
	msgpack_pack_map(&pk, STATS_NCOUNTERS);
	for (unsigned c = 0; c < STATS_NCOUNTERS; c++) {
		pack_str(&pk, stats_counter_names[c],
			 strlen(stats_counter_names[c]));
		msgpack_pack_uint64(&pk, st->total.cur.c[c]);
	}
	pack_str(&pk, "resources", 9);
	HASH_ITER(hh, st->by_name, r, rtmp) {
		if (r->last_token)
			ntok++;
	}
	msgpack_pack_map(&pk, ntok);
	HASH_ITER(hh, st->by_name, r, rtmp) {
		if (!r->last_token)
			continue;
		pack_str(&pk, r->name, r->len);
		msgpack_pack_uint64(&pk, r->last_token);
	}
}

/*
 * Create the temp file exclusively, its name in tmp (of size len, holding
 * "<path>.tmp" on entry): remove whatever is at that name first (a crash's
 * leftover, or a FIFO or link someone put there: the name is ours), then
 * O_CREAT|O_EXCL, which never follows a link and never opens a FIFO. When
 * the name cannot be cleared (a folder there, or another user's file in a
 * sticky folder), a fresh random name beside it is used instead, so that
 * no one can stop the token reservations by squatting on one name.
 */
static int
temp_create(char *tmp, size_t len, int gid, char *err, size_t errlen)
{
	mode_t mode = gid >= 0 ? 0640 : 0600;
	int fd = -1, e = 0;

	for (int i = 0; i < 5; i++) {
		if (unlink(tmp) < 0 && errno != ENOENT) {
			e = errno;
			break;
		}
		fd = open(tmp,
			  O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW |
			      O_NONBLOCK | O_NOCTTY,
			  mode);
		if (fd >= 0 || (e = errno) != EEXIST)
			break;
	}
	if (fd < 0 && strlen(tmp) + 8 < len) {
		char *end = tmp + strlen(tmp);

		memcpy(end, ".XXXXXX", 8);
		fd = mkostemp(tmp, O_CLOEXEC);
		if (fd < 0)
			*end = '\0';
		else
			(void)fchmod(fd, mode);
	}
	if (fd < 0) {
		snprintf(err, errlen, "cannot create the temp file %s: %s; %s",
			 tmp, strerror(e),
			 e == EISDIR ? "a folder is in the way: remove it"
			 : e == EPERM || e == EACCES || e == EEXIST
			     ? "something the daemon cannot replace is in the "
			       "way: remove it (only arbiter writes there)"
			     : "check the storage folder");
		return -e;
	}
	(void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	if (gid >= 0)
		(void)!fchown(fd, (uid_t)-1, (gid_t)gid);
	return fd;
}

/* Store an encoded record durably: temp file, fsync, rename, folder fsync. */
static int
state_store(const char *path, int gid, const char *data, size_t len,
	    unsigned *fsyncs, char *err, size_t errlen)
{
	char tmp[4200], dir[4200], *slash;
	struct stat mine, now;
	size_t off = 0;
	int fd, dfd;

	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	fd = temp_create(tmp, sizeof tmp, gid, err, errlen);
	if (fd < 0)
		return fd;
	while (off < len) {
		ssize_t w = write(fd, data + off, len - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int rc = w < 0 ? -errno : -EIO;

			snprintf(err, errlen, "cannot write %s: %s", tmp,
				 strerror(-rc));
			close(fd);
			unlink(tmp);
			return rc;
		}
		off += (size_t)w;
	}
	if (fsync(fd) < 0) {
		int rc = -errno;

		snprintf(err, errlen, "fsync %s: %s", tmp, strerror(-rc));
		close(fd);
		unlink(tmp);
		return rc;
	}
	(*fsyncs)++;
	if (fstat(fd, &mine) < 0)
		memset(&mine, 0, sizeof mine);
	close(fd);
	if (rename(tmp, path) < 0) {
		int rc = -errno;

		snprintf(err, errlen, "cannot rename %s to %s: %s%s", tmp, path,
			 strerror(-rc),
			 rc == -EISDIR || rc == -ENOTEMPTY
			     ? " (a folder is in the way; remove it)"
			     : "");
		unlink(tmp);
		return rc;
	}
	/* Whoever may write the folder could have swapped the temp name
	 * between our write and the rename: then what now sits at the path
	 * is not our record. Say so; the caller writes again. */
	if (lstat(path, &now) < 0 || now.st_dev != mine.st_dev ||
	    now.st_ino != mine.st_ino) {
		snprintf(err, errlen,
			 "%s was replaced while the state was written to it; "
			 "another process writes in the storage folder: stop "
			 "it (only arbiter writes there)",
			 tmp);
		return -ESTALE;
	}
	snprintf(dir, sizeof dir, "%s", path);
	slash = strrchr(dir, '/');
	if (slash != NULL)
		*(slash == dir ? slash + 1 : slash) = '\0';
	else
		snprintf(dir, sizeof dir, ".");
	/* The rename is durable only once the folder itself is synced. */
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		if (fsync(dfd) == 0)
			(*fsyncs)++;
		close(dfd);
	}
	return 0;
}

int
state_write(const char *path, uint64_t token_hw, bool clean, int gid,
	    const struct stats *st, unsigned *fsyncs, char *err, size_t errlen)
{
	msgpack_sbuffer sb;
	int rc;

	state_encode(&sb, token_hw, clean, st);
	rc = state_store(path, gid, sb.data, sb.size, fsyncs, err, errlen);
	msgpack_sbuffer_destroy(&sb);
	return rc;
}

static void *
writer_thread(void *arg)
{
	struct state_writer *w = arg;
	uint64_t one = 1;

	w->rc = state_store(w->path, w->gid, w->sb.data, w->sb.size, &w->fsyncs,
			    w->err, sizeof w->err);
	(void)!write(w->wake_fd, &one, sizeof one);
	return NULL;
}

void
state_writer_init(struct state_writer *w)
{
	memset(w, 0, sizeof *w);
	w->wake_fd = -1;
}

int
state_writer_start(struct state_writer *w, const char *path, uint64_t token_hw,
		   int gid, const struct stats *st)
{
	int rc;

	if (w->busy)
		return -EBUSY;
	if (w->wake_fd < 0) {
		w->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (w->wake_fd < 0) {
			rc = -errno;
			snprintf(w->err, sizeof w->err, "eventfd: %s",
				 strerror(-rc));
			return rc;
		}
	}
	w->path = strdup(path);
	if (w->path == NULL) {
		snprintf(w->err, sizeof w->err, "out of memory");
		return -ENOMEM;
	}
	state_encode(&w->sb, token_hw, false, st);
	w->gid = gid;
	w->token_hw = token_hw;
	w->fsyncs = 0;
	w->rc = 0;
	w->err[0] = '\0';
	rc = thread_start(&w->tid, writer_thread, w);
	if (rc != 0) {
		snprintf(w->err, sizeof w->err, "cannot start a thread: %s",
			 strerror(rc));
		msgpack_sbuffer_destroy(&w->sb);
		free(w->path);
		w->path = NULL;
		return -rc;
	}
	w->busy = true;
	return 0;
}

int
state_writer_finish(struct state_writer *w)
{
	uint64_t v;

	if (!w->busy)
		return -EINVAL;
	pthread_join(w->tid, NULL);
	(void)!read(w->wake_fd, &v, sizeof v);
	w->busy = false;
	msgpack_sbuffer_destroy(&w->sb);
	free(w->path);
	w->path = NULL;
	return w->rc;
}

void
state_writer_free(struct state_writer *w)
{
	if (w->busy)
		(void)state_writer_finish(w);
	if (w->wake_fd >= 0)
		close(w->wake_fd);
	w->wake_fd = -1;
}
