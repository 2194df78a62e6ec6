using System.Globalization;

namespace Treaty.Simulation.Harness;

/// <summary>
/// The single-threaded discrete-event loop of one run: a priority queue of (virtual time, sequence,
/// node, callback). Everything that happens in a run — an engine continuation, a timer, a message —
/// is one of these callbacks, run on the thread that called <see cref="RunUntil"/>, inside the
/// <see cref="SimNode"/> that owns it. Ties at the same virtual time run in the order they were
/// queued, so a run is a pure function of its seed.
/// </summary>
internal sealed class SimScheduler
{
    public static readonly DateTimeOffset Epoch = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);

    private readonly PriorityQueue<Item, (long At, long Seq)> _queue = new();
    private readonly int _thread = Environment.CurrentManagedThreadId;
    private long _sequence;
    private int _escapes;

    public SimScheduler(SimTrace trace) => Trace = trace;

    public SimTrace Trace { get; }

    /// <summary>Virtual ticks since <see cref="Epoch"/>; never goes backwards.</summary>
    public long NowTicks { get; private set; }

    public DateTimeOffset Now => Epoch.AddTicks(NowTicks);

    public long Executed { get; private set; }

    /// <summary>Posts that came from another thread: something escaped to the thread pool.</summary>
    public int Escapes => Volatile.Read(ref _escapes);

    /// <summary>Exceptions thrown by callbacks (a bug in the harness or in the engine).</summary>
    public List<string> Crashes { get; } = [];

    public void Post(SimNode node, TimeSpan delay, SendOrPostCallback callback, object? state)
    {
        if (Environment.CurrentManagedThreadId != _thread)
        {
            // Never touch the queue from a foreign thread; the run is already non-deterministic.
            Interlocked.Increment(ref _escapes);
            return;
        }

        var at = NowTicks + Math.Max(0, delay.Ticks);
        _queue.Enqueue(new Item(node, callback, state), (at, _sequence++));
    }

    public void At(SimNode node, TimeSpan delay, Action action) => Post(node, delay, static s => ((Action)s!)(), action);

    /// <summary>A fault: the clock leaps forward (a paused VM, an NTP step); everything due meanwhile runs late.</summary>
    public void Jump(TimeSpan by) => NowTicks += by.Ticks;

    /// <summary>Runs callbacks in order until <paramref name="stop"/> says so or nothing is left.</summary>
    public bool RunUntil(Func<bool> stop, long maxEvents)
    {
        while (_queue.TryDequeue(out var item, out var key))
        {
            if (key.At > NowTicks)
            {
                NowTicks = key.At;
            }

            if (!item.Node.Alive)
            {
                continue; // the node crashed: whatever it had queued is gone.
            }

            if (item.Node.PausedUntilTicks > NowTicks)
            {
                // The node is frozen (a GC pause, a stalled VM): what it had queued runs when it
                // thaws, in the order it was queued.
                _queue.Enqueue(item, (item.Node.PausedUntilTicks, _sequence++));
                continue;
            }

            Executed++;
            var previous = SynchronizationContext.Current;
            SynchronizationContext.SetSynchronizationContext(item.Node);
            try
            {
                item.Callback(item.State);
            }
            catch (Exception ex)
            {
                Crashes.Add($"{item.Node.Name}: {ex}");
                Trace.Add(this, item.Node.Name, $"UNHANDLED {ex.GetType().Name}: {ex.Message}");
            }
            finally
            {
                SynchronizationContext.SetSynchronizationContext(previous);
            }

            if (stop() || Executed >= maxEvents)
            {
                return true;
            }
        }

        return false;
    }

    public static string Format(long ticks) =>
        (ticks / (double)TimeSpan.TicksPerSecond).ToString("00000.000", CultureInfo.InvariantCulture);

    private readonly record struct Item(SimNode Node, SendOrPostCallback Callback, object? State);
}

/// <summary>
/// One process of the simulated world (a coordinator incarnation, a participant incarnation, the
/// client). Its <see cref="SynchronizationContext"/> sends every continuation back through the
/// scheduler; crashing the node drops everything it had queued.
/// </summary>
internal sealed class SimNode(SimScheduler scheduler, string name) : SynchronizationContext
{
    public string Name { get; } = name;

    public bool Alive { get; private set; } = true;

    public SimScheduler Scheduler { get; } = scheduler;

    public void Kill() => Alive = false;

    /// <summary>Until when (virtual ticks) the node is frozen: nothing it has queued runs before then; 0 when it never was.</summary>
    public long PausedUntilTicks { get; private set; }

    /// <summary>A fault: the process stalls for <paramref name="length"/> (a GC pause, a stalled VM) and then carries on where it was.</summary>
    public void Pause(TimeSpan length) => PausedUntilTicks = Math.Max(PausedUntilTicks, Scheduler.NowTicks + length.Ticks);

    /// <summary>Whether the node is frozen now.</summary>
    public bool Paused => PausedUntilTicks > Scheduler.NowTicks;

    public override void Post(SendOrPostCallback d, object? state) => Scheduler.Post(this, TimeSpan.Zero, d, state);

    public override void Send(SendOrPostCallback d, object? state) =>
        throw new NotSupportedException("Synchronous sends would bypass the scheduler.");

    public override SynchronizationContext CreateCopy() => this;

    /// <summary>The node the current callback runs in.</summary>
    public static SimNode Here =>
        SynchronizationContext.Current as SimNode
        ?? throw new InvalidOperationException("Not running inside a simulated node: something escaped the scheduler.");
}

/// <summary>The readable record of a run: the last lines always, every line on replay; a hash for determinism checks.</summary>
internal sealed class SimTrace(bool keepAll, int tail = 300)
{
    private readonly Queue<string> _tail = new();
    private readonly List<string> _all = [];
    private ulong _hash = 14695981039346656037UL;

    public long Lines { get; private set; }

    public ulong Hash => _hash;

    public IReadOnlyList<string> All => _all;

    public void Add(SimScheduler scheduler, string node, string text)
    {
        var line = $"{SimScheduler.Format(scheduler.NowTicks)} {node,-9} {text}";
        Lines++;
        foreach (var c in line)
        {
            _hash = (_hash ^ c) * 1099511628211UL;
        }

        _hash = (_hash ^ '\n') * 1099511628211UL;
        if (keepAll)
        {
            _all.Add(line);
        }

        _tail.Enqueue(line);
        if (_tail.Count > tail)
        {
            _tail.Dequeue();
        }
    }

    public string Tail() => string.Join('\n', _tail);
}
