using System.Collections.Concurrent;
using Microsoft.Data.Sqlite;

namespace Treaty.Storage.Sqlite;

/// <summary>
/// Open read connections, reused. In WAL mode readers see the last commit and neither block the
/// writer nor wait for it. The store owns them (rather than the driver's pool) so that dispose
/// closes every handle on the file.
/// </summary>
internal sealed class ReaderPool(string path) : IDisposable
{
    private readonly ConcurrentBag<SqliteConnection> _idle = [];
    private readonly int _maxIdle = Math.Max(4, Environment.ProcessorCount * 2);
    private int _idleCount;
    private volatile bool _disposed;

    public Lease Rent()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_idle.TryTake(out var connection))
        {
            Interlocked.Decrement(ref _idleCount);
            return new Lease(this, connection);
        }

        return new Lease(this, Schema.OpenReader(path));
    }

    public void Dispose()
    {
        _disposed = true;
        while (_idle.TryTake(out var connection))
        {
            connection.Dispose();
        }
    }

    private void Return(SqliteConnection connection)
    {
        if (_disposed)
        {
            connection.Dispose();
            return;
        }

        if (Interlocked.Increment(ref _idleCount) > _maxIdle)
        {
            Interlocked.Decrement(ref _idleCount);
            connection.Dispose();
            return;
        }

        _idle.Add(connection);
        if (_disposed)
        {
            // Dispose ran while this one was being returned.
            Dispose();
        }
    }

    /// <summary>A rented connection; dispose to give it back.</summary>
    public readonly struct Lease(ReaderPool pool, SqliteConnection connection) : IDisposable
    {
        public SqliteConnection Connection { get; } = connection;

        public void Dispose() => pool.Return(Connection);
    }
}
