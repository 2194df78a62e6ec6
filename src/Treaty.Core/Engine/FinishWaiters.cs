using System.Collections.Concurrent;

namespace Treaty.Core.Engine;

/// <summary>
/// The waiters of <see cref="ITransactionStore.WhenFinishedAsync"/> in one process: a store adds a
/// waiter per call and signals a gid when it learns that the gid finished (its own terminal write,
/// or a notification from the database).
/// </summary>
public sealed class FinishWaiters
{
    private readonly ConcurrentDictionary<string, List<TaskCompletionSource>> _waiters = new(StringComparer.Ordinal);

    /// <summary>Gids with at least one waiter.</summary>
    public int Count => _waiters.Count;

    /// <summary>Registers a waiter now; the task completes at the gid's next <see cref="Signal"/> or is canceled with the token.</summary>
    public Task WaitAsync(string gid, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(gid);
        if (cancellationToken.IsCancellationRequested)
        {
            return Task.FromCanceled(cancellationToken);
        }

        var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var list = _waiters.GetOrAdd(gid, static _ => []);
        lock (list)
        {
            list.Add(waiter);
            // A Signal that removed this list before the Add would leave the waiter orphaned: re-add.
            _waiters.TryAdd(gid, list);
        }

        if (cancellationToken.CanBeCanceled)
        {
            var registration = cancellationToken.Register(() =>
            {
                Remove(gid, list, waiter);
                waiter.TrySetCanceled(cancellationToken);
            });
            _ = waiter.Task.ContinueWith(_ => registration.Dispose(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }

        return waiter.Task;
    }

    /// <summary>Wakes every waiter of <paramref name="gid"/>.</summary>
    public void Signal(string gid)
    {
        ArgumentNullException.ThrowIfNull(gid);
        if (!_waiters.TryRemove(gid, out var list))
        {
            return;
        }

        TaskCompletionSource[] ready;
        lock (list)
        {
            ready = [.. list];
            list.Clear();
        }

        foreach (var waiter in ready)
        {
            waiter.TrySetResult();
        }
    }

    /// <summary>Wakes every waiter (a notification connection was lost: anything may have finished meanwhile).</summary>
    public void SignalAll()
    {
        foreach (var gid in _waiters.Keys)
        {
            Signal(gid);
        }
    }

    private void Remove(string gid, List<TaskCompletionSource> list, TaskCompletionSource waiter)
    {
        lock (list)
        {
            list.Remove(waiter);
            if (list.Count == 0)
            {
                _waiters.TryRemove(new KeyValuePair<string, List<TaskCompletionSource>>(gid, list));
            }
        }
    }
}
