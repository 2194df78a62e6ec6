using System.Diagnostics;
using System.Globalization;
using System.Threading.Channels;
using Npgsql;
using Treaty.Storage;

namespace Treaty.Storage.PostgreSql;

/// <summary>
/// Group commit for PostgreSQL: the transaction writes (inserts and decisions, one statement each)
/// are queued and one loop sends whatever is queued as one <see cref="NpgsqlBatch"/> — one round
/// trip, one implicit transaction, one WAL flush for all of them — and completes each caller with
/// its own statement's count. A batch never waits to fill: a lone write goes at once, and under
/// load the queue grows while the previous batch is on the wire.
/// </summary>
/// <remarks>
/// Every statement reports its outcome as data (a count of 0 is a conflict the caller looks into),
/// so a batch fails only on an error. A <see cref="PostgresException"/> is the server's answer: the
/// implicit transaction was rolled back and nothing of the batch is written, so each write is
/// tried again on its own and only the one at fault fails. Any other failure (the connection lost
/// on the way) leaves the batch's outcome unknown, and every write of it fails with that error,
/// as a single statement would.
/// </remarks>
internal sealed class WriteBatcher
{
    /// <summary>Writes sent in one batch at most.</summary>
    public const int MaxBatch = 128;

    private readonly Channel<PendingWrite> _queue = Channel.CreateUnbounded<PendingWrite>(new UnboundedChannelOptions { SingleReader = true });
    private readonly NpgsqlDataSource _data;
    private Task? _loop;
    private long _batches;
    private volatile TaskCompletionSource? _held;

    public WriteBatcher(NpgsqlDataSource data) => _data = data;

    /// <summary>Batches of more than one write committed so far (tests).</summary>
    public long Batches => Interlocked.Read(ref _batches);

    public void Start() => _loop ??= Task.Run(RunAsync, CancellationToken.None);

    /// <summary>Takes no more writes, sends every queued one, and ends the loop.</summary>
    public Task StopAsync()
    {
        _queue.Writer.TryComplete();
        return _loop ?? Task.CompletedTask;
    }

    /// <summary>Holds the loop before its next batch until the result is disposed (tests batch writes deterministically).</summary>
    public IDisposable Hold()
    {
        var held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _held = held;
        return new Release(this, held);
    }

    /// <summary>
    /// Queues <paramref name="sql"/> (a statement returning one count) with the parameters
    /// <paramref name="fill"/> adds, and returns that count once it is committed. Once queued the
    /// write goes ahead; <paramref name="cancellationToken"/> only stops the waiting.
    /// </summary>
    public Task<long> WriteAsync(string sql, Action<NpgsqlParameterCollection> fill, CancellationToken cancellationToken)
    {
        var write = new PendingWrite(sql, fill);
        if (!_queue.Writer.TryWrite(write))
        {
            throw new ObjectDisposedException(nameof(PostgreSqlTransactionStore));
        }

        return write.Done.Task.WaitAsync(cancellationToken);
    }

    private async Task RunAsync()
    {
        var batch = new List<PendingWrite>(MaxBatch);
        while (await _queue.Reader.WaitToReadAsync(CancellationToken.None))
        {
            if (_held is { } held)
            {
                await held.Task;
            }

            batch.Clear();
            while (batch.Count < MaxBatch && _queue.Reader.TryRead(out var write))
            {
                batch.Add(write);
            }

            if (batch.Count == 1)
            {
                await OneAsync(batch[0]);
            }
            else if (batch.Count > 1)
            {
                await ManyAsync(batch);
            }
        }
    }

    private async Task OneAsync(PendingWrite write)
    {
        try
        {
            await using var command = _data.CreateCommand(write.Sql);
            write.Fill(command.Parameters);
            var started = Stopwatch.GetTimestamp();
            var count = Convert.ToInt64(await command.ExecuteScalarAsync(CancellationToken.None), CultureInfo.InvariantCulture);
            StoreMetrics.Committed(StoreMetrics.PostgreSql, 1, started);
            write.Done.TrySetResult(count);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            write.Done.TrySetException(ex);
        }
    }

    private async Task ManyAsync(List<PendingWrite> batch)
    {
        var counts = new long[batch.Count];
        var started = Stopwatch.GetTimestamp();
        try
        {
            await using var connection = await _data.OpenConnectionAsync(CancellationToken.None);
            await using var commands = new NpgsqlBatch(connection);
            foreach (var write in batch)
            {
                var command = new NpgsqlBatchCommand(write.Sql);
                write.Fill(command.Parameters);
                commands.BatchCommands.Add(command);
            }

            await using (var reader = await commands.ExecuteReaderAsync(CancellationToken.None))
            {
                for (var i = 0; i < batch.Count; i++)
                {
                    if (i > 0 && !await reader.NextResultAsync(CancellationToken.None))
                    {
                        throw new InvalidOperationException($"The batch answered {i} results for {batch.Count} statements.");
                    }

                    counts[i] = await reader.ReadAsync(CancellationToken.None) ? reader.GetInt64(0) : 0;
                }
            }
        }
        catch (PostgresException)
        {
            // The server refused a statement: the implicit transaction is rolled back, nothing of
            // the batch is written. Each on its own, so only the one at fault fails.
            foreach (var write in batch)
            {
                await OneAsync(write);
            }

            return;
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // Committed or not is unknown: each caller learns it as it would from one statement.
            foreach (var write in batch)
            {
                write.Done.TrySetException(ex);
            }

            return;
        }

        Interlocked.Increment(ref _batches);
        StoreMetrics.Committed(StoreMetrics.PostgreSql, batch.Count, started);
        for (var i = 0; i < batch.Count; i++)
        {
            batch[i].Done.TrySetResult(counts[i]);
        }
    }

    private sealed class Release(WriteBatcher batcher, TaskCompletionSource held) : IDisposable
    {
        public void Dispose()
        {
            Interlocked.CompareExchange(ref batcher._held, null, held);
            held.TrySetResult();
        }
    }

    private sealed class PendingWrite(string sql, Action<NpgsqlParameterCollection> fill)
    {
        public string Sql { get; } = sql;

        public Action<NpgsqlParameterCollection> Fill { get; } = fill;

        public TaskCompletionSource<long> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
