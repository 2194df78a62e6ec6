using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Treaty.Core.Diagnostics;

namespace Treaty.Storage.Sqlite;

/// <summary>
/// Group commit. Callers queue writes; one writer thread with its own connection takes whatever is
/// queued (up to the batch size), applies it in one SQLite transaction, commits once (one fsync for
/// the whole batch), and only then completes the callers. A batch never waits to fill: under light
/// load it holds one write, under heavy load the queue grows while the previous fsync runs and the
/// next batch takes it all.
/// </summary>
internal sealed class GroupCommitWriter
{
    private readonly Channel<WriteRequest> _queue = Channel.CreateUnbounded<WriteRequest>(
        new UnboundedChannelOptions { SingleReader = true, SingleWriter = false });

    private readonly WriterConnection _writer;
    private readonly int _maxBatchSize;
    private readonly ILogger _logger;
    private readonly string _path;
    private readonly ManualResetEventSlim _gate = new(initialState: true);
    private readonly Task _loop;
    private long _committedBatches;

    public GroupCommitWriter(WriterConnection writer, int maxBatchSize, string path, ILogger logger)
    {
        _path = path;
        _writer = writer;
        _maxBatchSize = maxBatchSize;
        _logger = logger;
        // A thread of its own: SQLite's calls (and the fsync) block, and must not hold a pool thread.
        _loop = Task.Factory.StartNew(Run, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <summary>The writer thread's name, as the operating system shows it (at most 15 characters on Linux).</summary>
    public const string WriterThreadName = "treaty-writer";

    /// <summary>Batches committed so far.</summary>
    public long CommittedBatches => Interlocked.Read(ref _committedBatches);

    /// <summary>Queues a write; false once the writer is shutting down.</summary>
    public bool TryEnqueue(WriteRequest request) => _queue.Writer.TryWrite(request);

    /// <summary>Stops taking writes, commits every queued one, and closes the connection.</summary>
    public Task StopAsync()
    {
        _queue.Writer.TryComplete();
        _gate.Set();
        return _loop;
    }

    /// <summary>Holds the writer before its next batch until the result is disposed (tests batch writes deterministically).</summary>
    public IDisposable Hold()
    {
        _gate.Reset();
        return new Release(_gate);
    }

    private void Run()
    {
        // Named for the operating system too (top -H, perf, /proc/PID/task/*/comm, treaty bench):
        // one thread does every write of the store.
        Thread.CurrentThread.Name = WriterThreadName;
        var batch = new List<WriteRequest>(Math.Min(_maxBatchSize, 1024));
        try
        {
            while (WaitForWork())
            {
                _gate.Wait();
                batch.Clear();
                while (batch.Count < _maxBatchSize && _queue.Reader.TryRead(out var request))
                {
                    batch.Add(request);
                }

                if (batch.Count > 0)
                {
                    Execute(batch);
                }
            }
        }
        finally
        {
            Close();
        }
    }

    private void Close()
    {
        try
        {
            // Folds the write-ahead log into the database so a closed store is one tidy file.
            Schema.Pragma(_writer.Connection, "PRAGMA wal_checkpoint(TRUNCATE);");
        }
        catch (Exception ex)
        {
            Log.CheckpointFailed(_logger, ex, _path);
        }

        _writer.Dispose();
    }

    // Blocking is the point: this is the writer's own thread and it has nothing else to do.
    private bool WaitForWork() => _queue.Reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult();

    private void Execute(List<WriteRequest> batch)
    {
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            _writer.Begin();
        }
        catch (Exception ex)
        {
            FailAll(batch, ex);
            return;
        }

        try
        {
            if (!TryApplyAll(batch))
            {
                // One write threw: nothing of this attempt stays. Again, each write under its own
                // savepoint, so only the one that throws fails.
                _writer.Rollback();
                _writer.Begin();
                foreach (var request in batch)
                {
                    request.Reset();
                    ApplyOne(request);
                }
            }

            _writer.Commit();
        }
        catch (Exception ex)
        {
            TryRollback();
            FailAll(batch, ex);
            return;
        }

        Interlocked.Increment(ref _committedBatches);
        StoreMetrics.Committed(StoreMetrics.Sqlite, batch.Count, started);
        Log.BatchCommitted(_logger, batch.Count);
        foreach (var request in batch)
        {
            request.Complete();
        }
    }

    /// <summary>
    /// The fast path: every write straight into the batch's transaction, no savepoints (a write that
    /// finds a conflict records it and writes nothing; it does not throw). False when one threw:
    /// its partial effects are in the transaction, and the caller rolls the attempt back.
    /// </summary>
    private bool TryApplyAll(List<WriteRequest> batch)
    {
        foreach (var request in batch)
        {
            if (request.CancellationToken.IsCancellationRequested)
            {
                request.SetCanceled();
                continue;
            }

            try
            {
                request.Apply(_writer);
            }
            catch (Exception)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// One write under its own savepoint: if it throws, its partial effects (a state row without its
    /// journal, say) are undone and only it fails. A failure of the savepoint machinery itself
    /// escapes and fails the batch.
    /// </summary>
    private void ApplyOne(WriteRequest request)
    {
        if (request.CancellationToken.IsCancellationRequested)
        {
            request.SetCanceled();
            return;
        }

        _writer.Savepoint();
        try
        {
            request.Apply(_writer);
        }
        catch (Exception ex)
        {
            _writer.RollbackToSavepoint();
            _writer.Release();
            // The writer's thread serves many transactions: the failed write's gid scope around its line.
            using (request.Gid is { } gid ? _logger.BeginGidScope(gid) : null)
            {
                Log.WriteFailed(_logger, ex, request.Gid ?? "(probe)");
            }

            request.SetFailed(ex);
            return;
        }

        _writer.Release();
    }

    private void TryRollback()
    {
        try
        {
            // Only when a transaction is still open: a failed COMMIT may already have ended it.
            if (SQLitePCL.raw.sqlite3_get_autocommit(_writer.Connection.Handle) == 0)
            {
                _writer.Rollback();
            }
        }
        catch (Exception ex)
        {
            Log.BatchFailed(_logger, ex, 0);
        }
    }

    private void FailAll(List<WriteRequest> batch, Exception ex)
    {
        Log.BatchFailed(_logger, ex, batch.Count);
        foreach (var request in batch)
        {
            request.Fail(ex);
        }
    }

    private sealed class Release(ManualResetEventSlim gate) : IDisposable
    {
        public void Dispose() => gate.Set();
    }
}
