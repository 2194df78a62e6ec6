using SQLitePCL;

namespace Treaty.Storage.Sqlite;

/// <summary>
/// Process-wide settings of the SQLite library, made once before the store opens its first
/// connection (SQLite takes them only before it initializes; later they are refused with
/// SQLITE_MISUSE and the library keeps its defaults, which are correct, only slower).
/// </summary>
internal static class SqliteLibrary
{
    private static readonly Lazy<int> Configured = new(Configure, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The result code of the threading setting: <c>SQLITE_OK</c> (0) when it was taken.</summary>
    public static int EnsureConfigured() => Configured.Value;

    private static int Configure()
    {
        Batteries_V2.Init();
        // Multi-thread mode: no mutex around each call on a connection. Safe because no connection
        // is ever used by two threads at once (the writer has its own thread; a reader is lent to
        // one caller at a time), which SqliteConnection requires anyway. The serialized default
        // spent ~8 % of the writer thread locking and unlocking.
        var threading = raw.sqlite3_config(raw.SQLITE_CONFIG_MULTITHREAD);
        // No allocation statistics: each malloc and free took a global mutex to count bytes.
        raw.sqlite3_config(raw.SQLITE_CONFIG_MEMSTATUS, 0);
        return threading;
    }
}
