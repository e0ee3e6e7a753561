/*
 * notify: the systemd readiness protocol (sd_notify), without libsystemd.
 * Sends "READY=1", "STOPPING=1", "STATUS=..." datagrams to $NOTIFY_SOCKET
 * when it is set; does nothing otherwise.
 */
#ifndef ARBITER_NOTIFY_H
#define ARBITER_NOTIFY_H

/* 0 when sent or not under systemd, -errno when sending failed. */
int notify_send(const char *msg);

#endif
