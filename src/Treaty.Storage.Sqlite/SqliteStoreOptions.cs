namespace Treaty.Storage.Sqlite;

/// <summary>Settings of <see cref="SqliteTransactionStore"/>.</summary>
public sealed class SqliteStoreOptions
{
    /// <summary>The database file. Its directory is created when missing. Default <c>./data/treaty.db</c>.</summary>
    public string Path { get; set; } = SqliteStoreDefaults.Path;

    /// <summary>
    /// Most writes committed in one SQLite transaction (one fsync). Larger batches raise throughput
    /// under load and do not delay a lone write: a batch holds whatever is queued, never waits to fill.
    /// Default 256.
    /// </summary>
    public int MaxBatchSize { get; set; } = SqliteStoreDefaults.MaxBatchSize;

    /// <summary>The problems of these settings, or an empty list when they are usable.</summary>
    public IReadOnlyList<string> Validate()
    {
        var problems = new List<string>();
        if (string.IsNullOrWhiteSpace(Path))
        {
            problems.Add("SqliteStoreOptions.Path must name a database file.");
        }

        if (MaxBatchSize is < 1 or > SqliteStoreDefaults.MaxBatchSizeLimit)
        {
            problems.Add($"SqliteStoreOptions.MaxBatchSize must be between 1 and {SqliteStoreDefaults.MaxBatchSizeLimit}.");
        }

        return problems;
    }
}

/// <summary>Every default of the SQLite store in one place.</summary>
public static class SqliteStoreDefaults
{
    /// <summary>Default database file, relative to the working directory.</summary>
    public const string Path = "./data/treaty.db";

    /// <summary>Default most writes per group commit.</summary>
    public const int MaxBatchSize = 256;

    /// <summary>Largest accepted <see cref="SqliteStoreOptions.MaxBatchSize"/>.</summary>
    public const int MaxBatchSizeLimit = 10_000;

    /// <summary>How long a connection waits for a lock held by another connection (SQLite <c>busy_timeout</c>).</summary>
    public const int BusyTimeoutMs = 5_000;

    /// <summary>Most <see cref="Treaty.Core.Engine.TransactionQuery.Limit"/> honoured by a listing.</summary>
    public const int MaxListLimit = 500;
}
