using System.Globalization;

namespace Treaty.Simulation.Harness;

/// <summary>
/// How imprecise this run's timers are: with probability <see cref="Rate"/> a timer fires up to
/// 2 ms early (a system timer that truncates to whole milliseconds, or a coarse clock) or up to
/// 50 ms late (a busy thread pool, a descheduled process). Real timers are like this all the time,
/// so unlike the other faults this one does not stop when the fault phase ends.
/// </summary>
internal sealed class TimerSkew(Random random, double rate)
{
    public static readonly TimeSpan MaxEarly = TimeSpan.FromMilliseconds(2);

    public static readonly TimeSpan MaxLate = TimeSpan.FromMilliseconds(50);

    public double Rate { get; } = rate;

    /// <summary>Timers that fired early (counted when they fire, not when they were armed).</summary>
    public int Early { get; private set; }

    /// <summary>Timers that fired late.</summary>
    public int Late { get; private set; }

    /// <summary>Called when a skewed timer really fires.</summary>
    public void Fired(bool early)
    {
        if (early)
        {
            Early++;
        }
        else
        {
            Late++;
        }
    }

    /// <summary>When a timer asked to fire after <paramref name="due"/> really fires, and what to trace when it does.</summary>
    public (TimeSpan Due, string? Note) Adjust(TimeSpan due)
    {
        if (Rate <= 0 || random.NextDouble() >= Rate)
        {
            return (due, null);
        }

        if (random.Next(2) == 0)
        {
            // Early, but still after "now": a timer never fires before it was armed.
            var early = Math.Min(1 + random.NextInt64(MaxEarly.Ticks), due.Ticks - 1);
            if (early <= 0)
            {
                return (due, null);
            }

            return (due - TimeSpan.FromTicks(early), string.Create(CultureInfo.InvariantCulture, $"timer fired {early / 10_000.0:0.000}ms EARLY"));
        }

        var late = 1 + random.NextInt64(MaxLate.Ticks);
        return (due + TimeSpan.FromTicks(late), string.Create(CultureInfo.InvariantCulture, $"timer fired {late / 10_000.0:0.000}ms late"));
    }
}

/// <summary>
/// Virtual time. A timer belongs to the node that created it: it fires through the scheduler in
/// that node, and never after the node crashed. Timers run on the monotonic clock (the scheduler's
/// time) and may fire a little early or late (<see cref="TimerSkew"/>); the wall clock
/// (<see cref="GetUtcNow"/>) is the monotonic clock plus an offset that an NTP step moves forward
/// or backward.
/// </summary>
internal sealed class SimTimeProvider(SimScheduler scheduler, TimerSkew skew) : TimeProvider
{
    private long _wallOffsetTicks;

    public TimerSkew Skew { get; } = skew;

    /// <summary>How far the wall clock is from the monotonic clock (negative after a step back).</summary>
    public TimeSpan WallOffset => TimeSpan.FromTicks(_wallOffsetTicks);

    /// <summary>
    /// A constant error of this machine's wall clock against the true time (clock skew between
    /// coordinator instances); timers are not affected. Zero but in the multi-coordinator mode.
    /// </summary>
    public TimeSpan Skewed { get; init; }

    public override DateTimeOffset GetUtcNow() => scheduler.Now.AddTicks(_wallOffsetTicks + Skewed.Ticks);

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    public override long GetTimestamp() => SimScheduler.Epoch.UtcTicks + scheduler.NowTicks;

    public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;

    /// <summary>A fault: the wall clock is set (an NTP step), forward or back; timers are not affected.</summary>
    public void StepWallClock(TimeSpan by) => _wallOffsetTicks += by.Ticks;

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = new SimTimer(scheduler, Skew, SimNode.Here, callback, state);
        timer.Change(dueTime, period);
        return timer;
    }

    private sealed class SimTimer(SimScheduler scheduler, TimerSkew skew, SimNode node, TimerCallback callback, object? state) : ITimer
    {
        private long _generation;
        private TimeSpan _period = Timeout.InfiniteTimeSpan;
        private bool _disposed;

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            if (_disposed)
            {
                return false;
            }

            // A new generation invalidates whatever was queued for the old due time.
            var generation = ++_generation;
            _period = period;
            if (dueTime != Timeout.InfiniteTimeSpan)
            {
                var (due, note) = skew.Adjust(dueTime);
                scheduler.Post(node, due, s => Fire(generation, note), null);
            }

            return true;
        }

        private void Fire(long generation, string? note)
        {
            if (_disposed || generation != _generation)
            {
                return;
            }

            if (note is not null)
            {
                skew.Fired(early: note.Contains("EARLY", StringComparison.Ordinal));
                scheduler.Trace.Add(scheduler, node.Name, note);
            }

            if (_period != Timeout.InfiniteTimeSpan && _period > TimeSpan.Zero)
            {
                var next = ++_generation;
                var (due, nextNote) = skew.Adjust(_period);
                scheduler.Post(node, due, s => Fire(next, nextNote), null);
            }

            callback(state);
        }

        public void Dispose()
        {
            _disposed = true;
            _generation++;
        }

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
