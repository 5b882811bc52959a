// A SQLite VFS for power-loss tests: it passes everything to the default VFS and remembers, per file, what every
// write since the file's last sync overwrote. `baton_power_loss_cut` then puts each file back as its last sync
// left it — what a machine that loses power keeps — and fails every later write, so that the process can be
// killed with nothing more reaching its files.
#ifndef BATON_POWER_LOSS_VFS_H
#define BATON_POWER_LOSS_VFS_H

/// Registers the VFS as the process's default, over the default one: every connection opened afterwards goes
/// through it. Each sync takes `syncDelayMicroseconds` longer (a slow disk), with nothing locked meanwhile.
/// Returns a SQLite result code.
int baton_power_loss_install(int syncDelayMicroseconds);

/// Drops every write no sync covered (in the database, WAL and rollback-journal files opened through the VFS)
/// and fails every write and sync from now on. Returns how many bytes of the files it put back or cut off.
long long baton_power_loss_cut(void);

#endif
