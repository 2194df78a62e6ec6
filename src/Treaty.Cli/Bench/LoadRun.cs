using System.Diagnostics;

namespace Treaty.Cli.Bench;

/// <summary>What one measured window gave.</summary>
/// <param name="Completed">Operations that succeeded and ended inside the window.</param>
/// <param name="Errors">Operations that failed and ended inside the window.</param>
/// <param name="Seconds">The window's length as measured.</param>
/// <param name="LatenciesMs">The successful operations' latencies, sorted.</param>
/// <param name="FirstError">What the first failure was, for the message.</param>
internal sealed record LoadResult(long Completed, long Errors, double Seconds, double[] LatenciesMs, string? FirstError)
{
    public double Throughput => Seconds <= 0 ? 0 : Completed / Seconds;

    /// <summary>The latency below which a fraction <paramref name="p"/> of the operations ended; null with none.</summary>
    public double? Percentile(double p) =>
        LatenciesMs.Length == 0 ? null : LatenciesMs[Math.Min(LatenciesMs.Length - 1, (int)(p * LatenciesMs.Length))];
}

/// <summary>
/// A closed loop: <c>concurrency</c> clients each run one operation, then the next as soon as it
/// ends; a warm-up that is not measured, then the window. An operation that ends inside the window
/// counts (latency from its start); one still running when the window closes is waited for but not
/// counted, so the next measurement starts on a quiet coordinator.
/// </summary>
internal static class LoadRun
{
    /// <param name="concurrency">Clients.</param>
    /// <param name="warmup">Unmeasured load first.</param>
    /// <param name="duration">The measured window.</param>
    /// <param name="operation">Operation <c>i</c>: null when it succeeded, else what went wrong.</param>
    /// <param name="windowOpened">Called as the window opens (e.g. to read a process's CPU time).</param>
    /// <param name="windowClosed">Called as the window closes.</param>
    /// <param name="cancellationToken">Stops everything (Ctrl+C).</param>
    public static async Task<LoadResult> RunAsync(
        int concurrency, TimeSpan warmup, TimeSpan duration, Func<long, CancellationToken, Task<string?>> operation,
        Action? windowOpened, Action? windowClosed, CancellationToken cancellationToken)
    {
        var latencies = Enumerable.Range(0, concurrency).Select(_ => new List<double>(1024)).ToArray();
        var errors = 0L;
        var measuring = false;
        var counter = 0L;
        string? firstError = null;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var workers = Enumerable.Range(0, concurrency).Select(w => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                var i = Interlocked.Increment(ref counter);
                var started = Stopwatch.GetTimestamp();
                string? error;
                try
                {
                    // The user's Ctrl+C cancels operations in flight; the window's end lets them finish.
                    error = await operation(i, cancellationToken);
                }
                catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
                {
                    return;
                }
                catch (Exception ex) when (ex is HttpRequestException or OperationCanceledException or IOException)
                {
                    error = ex is OperationCanceledException ? "timed out" : ex.Message;
                }

                if (Volatile.Read(ref measuring))
                {
                    if (error is null)
                    {
                        latencies[w].Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                    }
                    else
                    {
                        Interlocked.Increment(ref errors);
                        Interlocked.CompareExchange(ref firstError, error, null);
                    }
                }
            }
        }, CancellationToken.None)).ToArray();

        double seconds;
        try
        {
            if (warmup > TimeSpan.Zero)
            {
                await Task.Delay(warmup, TimeProvider.System, cancellationToken);
            }

            windowOpened?.Invoke();
            var clock = Stopwatch.StartNew();
            Volatile.Write(ref measuring, true);
            await Task.Delay(duration, TimeProvider.System, cancellationToken);
            Volatile.Write(ref measuring, false);
            seconds = clock.Elapsed.TotalSeconds;
            windowClosed?.Invoke();
        }
        finally
        {
            await stop.CancelAsync();
            await Task.WhenAll(workers);
        }

        var all = latencies.SelectMany(l => l).Order().ToArray();
        return new LoadResult(all.Length, Interlocked.Read(ref errors), seconds, all, firstError);
    }
}
