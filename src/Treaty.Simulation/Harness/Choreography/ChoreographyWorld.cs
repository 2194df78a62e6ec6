using System.Globalization;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.AspNetCore.Data;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;

namespace Treaty.Simulation.Harness.Choreography;

/// <summary>
/// The choreography mode of the simulation (<c>--mode choreography</c>): the Shop's choreographed
/// checkout with the real messaging kit in each service (outbox, inbox pipeline, relay loop) over a
/// SQLite file per service, a broker that loses, duplicates, delays and redelivers, services that
/// crash after a commit before their relay sends, after a publish before marking it sent, and
/// after an inbox commit before the ack, and the real engine with the real
/// <see cref="ChoreographyMachine"/> recording what the services report (its store may crash the
/// coordinator at a write). Then the faults stop, time runs on until everything is drained, and the
/// invariants are checked: every checkout ended at the services, money and stock are conserved,
/// every effect happened once, nothing is held, and the coordinator's outcome agrees.
/// </summary>
internal sealed class ChoreographyWorld
{
    private const string Order = "order";
    private const string Payment = "payment";
    private const string Inventory = "inventory";
    private const long EventBudget = 2_000_000;
    /// <summary>
    /// How long time runs on after the faults stopped before what is not drained is a liveness
    /// violation. The longest legitimate waits are a process's downtime (at most 5 s), the broker's
    /// visibility timeout (at most 3 s), the relay's backoff and poll (at most 2 s each), the
    /// reporter's request timeout and backoff (at most 2 s and 5 s) and the coordinator's recovery scan (5 s): a minute is far beyond them.
    /// </summary>
    private static readonly TimeSpan Horizon = TimeSpan.FromMinutes(1);

    private static readonly (string Sku, long PriceCents)[] Catalogue = [("book", 1_500), ("mug", 800), ("lamp", 4_500), ("pen", 100)];

    private readonly SimOptions _options;
    private readonly Random _random;
    private readonly Random _net;
    private readonly Random _ids;
    private readonly Random _coordinatorFaults;
    private readonly SimStore _store;
    private readonly TraceObserver _observer;
    private readonly string _directory;
    private readonly Dictionary<string, ChoreographyService> _services = new(StringComparer.Ordinal);
    private readonly List<CheckoutPayload> _checkouts = [];
    private readonly HashSet<string> _answered = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> _initialBalance = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> _initialStock = new(StringComparer.Ordinal);
    private readonly List<string> _violations = [];
    private readonly double _crashAtWrite;
    private readonly int _maxCoordinatorCrashes;
    private SimNode _coordinatorNode;
    private TransactionEngine _engine;
    private int _generation;
    private int _coordinatorCrashes;
    private int _clientRetries;
    private int _ordersPlaced;
    private bool _quiet;
    private long _faultEndTicks;

    private ChoreographyWorld(SimOptions options)
    {
        _options = options;
        _random = new Random(options.Seed);
        _net = new Random(unchecked((options.Seed * 8191) + 11));
        _ids = new Random(unchecked((options.Seed * 4099) + 17));
        _coordinatorFaults = new Random(unchecked((options.Seed * 7919) + 104_729));
        Scheduler = new SimScheduler(new SimTrace(options.KeepFullTrace));
        Control = new SimNode(Scheduler, "sim");
        Client = new SimNode(Scheduler, "client");
        var intensity = _random.NextDouble();
        double Rate(double max) => intensity * _random.NextDouble() * max;
        Faults = new ChoreographyFaults
        {
            LoseDelivery = Rate(0.3),
            DuplicateDelivery = Rate(0.3),
            Delay = Rate(0.4),
            LoseAck = Rate(0.3),
            PublishFails = Rate(0.2),
            ConfirmLost = Rate(0.2),
            HandlerError = Rate(0.15),
            LoseReport = Rate(0.3),
            CrashAfterCommit = Rate(0.25),
            CrashAfterPublish = Rate(0.25),
            CrashBeforeAck = Rate(0.25),
            CrashBeforeMark = Rate(0.25),
        };
        Time = new SimTimeProvider(Scheduler, new TimerSkew(new Random(unchecked((options.Seed * 31) + 7)), _random.Next(3) == 0 ? 0 : _random.NextDouble() * 0.2));
        NextEventTimeoutMs = 1_000 + _random.Next(15_000);
        _crashAtWrite = _random.Next(3) == 0 ? 0 : Rate(0.05);
        _maxCoordinatorCrashes = _random.Next(4);
        Broker = new SimBroker(Scheduler, _net, Faults, TimeSpan.FromMilliseconds(300 + _random.Next(2_700)), ChoreographyEvents.Subscriptions)
        {
            Consumer = (subscriber, message, ack, nack) => _services[subscriber].Receive(message, ack, nack),
        };
        _observer = new TraceObserver(Scheduler);
        _store = new SimStore(Scheduler, _coordinatorFaults, Fate, CrashCoordinator);
        (_coordinatorNode, _engine) = NewCoordinator();

        _directory = Path.Combine(Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath(), "treaty-sim", $"chor-{options.Seed.ToString(CultureInfo.InvariantCulture)}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(_directory);
        foreach (var name in new[] { Order, Payment, Inventory })
        {
            var service = new ChoreographyService(this, name, Path.Combine(_directory, name + ".db"), new Random(unchecked((options.Seed * 1009) + name.Length)))
            {
                CrashesLeft = _random.Next(9),
            };
            _services[name] = service;
        }
    }

    public SimScheduler Scheduler { get; }

    public SimTimeProvider Time { get; }

    public SimNode Control { get; }

    public SimNode Client { get; }

    public SimBroker Broker { get; }

    public ChoreographyFaults Faults { get; }

    /// <summary>The known-bad variant this run breaks the services with (<see cref="SimVariant.None"/>: the real kit as it is).</summary>
    public SimVariant Variant => _options.Variant;

    /// <summary>How long the coordinator waits for the next event of a checkout before it flags it stuck.</summary>
    public long NextEventTimeoutMs { get; }

    public static SimResult Execute(SimOptions options)
    {
        var world = new ChoreographyWorld(options);
        try
        {
            return world.Run();
        }
        finally
        {
            world.Cleanup();
        }
    }

    /// <summary>A connection to a service's database, outside any simulated process (the harness's own reads, and the reporter's marks).</summary>
    public static SqliteConnection Open(string path)
    {
        var connection = new SqliteConnection(HarnessConnectionString(path));
        connection.Open();
        return connection;
    }

    // Pooled, but not the kit's pool (a distinct string): the harness's reads never wait for a kit transaction.
    private static string HarnessConnectionString(string path) => new SqliteConnectionStringBuilder { DataSource = path, Pooling = true, Cache = SqliteCacheMode.Private }.ToString();

    /// <summary>A seeded version-7 message id, so a run (and its trace) is a function of its seed.</summary>
    public Guid NewMessageId(DateTimeOffset now)
    {
        Span<byte> bytes = stackalloc byte[16];
        _ids.NextBytes(bytes);
        var ms = now.ToUnixTimeMilliseconds();
        for (var i = 0; i < 6; i++)
        {
            bytes[i] = (byte)(ms >> (8 * (5 - i)));
        }

        bytes[6] = (byte)(0x70 | (bytes[6] & 0x0F));
        bytes[8] = (byte)(0x80 | (bytes[8] & 0x3F));
        return new Guid(bytes, bigEndian: true);
    }

    public TimeSpan Downtime() => TimeSpan.FromMilliseconds(5 + _random.Next(_random.Next(5) == 0 ? 5_000 : 800));

    public TimeSpan Latency() =>
        TimeSpan.FromMicroseconds(200 + _net.Next(5_000)) + (Faults.Active && _net.NextDouble() < Faults.Delay ? TimeSpan.FromMilliseconds(50 + _net.Next(1_500)) : TimeSpan.Zero);

    /// <summary>Runs <paramref name="work"/> in the coordinator's process that is up when the request arrives (none: the request is lost).</summary>
    public void ToCoordinator(TimeSpan delay, Func<TransactionEngine, Task> work) => Scheduler.At(Control, delay, () =>
    {
        var (node, engine) = (_coordinatorNode, _engine);
        if (node.Alive)
        {
            Scheduler.At(node, TimeSpan.Zero, () => Spawn(() => work(engine)));
        }
    });

    public void TraceCoordinator(string text) => Trace(_coordinatorNode, text);

    /// <summary>Starts async work in the current process; an exception is a finding, not a crash of the test.</summary>
    public void Spawn(Func<Task> work)
    {
        _ = Guard();

        async Task Guard()
        {
            try
            {
                await work();
            }
            catch (Exception ex)
            {
                Violation($"harness/kit threw: {ex}");
            }
        }
    }

    private SimResult Run()
    {
        foreach (var service in _services.Values)
        {
            Initialize(service);
        }

        var faultSeconds = 2 + _random.Next(20);
        _faultEndTicks = TimeSpan.FromSeconds(faultSeconds).Ticks;
        BuildWorkload();
        Trace(Control, $"seed {_options.Seed} (choreography, {SimVariants.Name(_options.Variant)}): {_checkouts.Count} checkouts ({string.Join(" ", _checkouts.Select(c => $"{c.OrderId}:{c.Customer}:{c.AmountCents}[{string.Join(",", c.Items.Select(i => $"{i.Sku}x{i.Qty}"))}]"))}), faults for {faultSeconds}s: {Faults}, crashes allowed {string.Join("/", _services.Values.Select(s => s.CrashesLeft))}, next-event timeout {NextEventTimeoutMs} ms");
        foreach (var service in _services.Values)
        {
            service.Start();
        }

        StartRecovery(_coordinatorNode, _engine);
        ScheduleRandomCrashes();
        Scheduler.At(Control, TimeSpan.FromTicks(_faultEndTicks), () =>
        {
            Faults.Active = false;
            Trace(Control, "faults stop; time runs on until everything is drained");
            Probe();
        });

        var horizon = _faultEndTicks + Horizon.Ticks;
        var stopped = Scheduler.RunUntil(() => _quiet || Scheduler.NowTicks >= horizon, EventBudget);
        if (!stopped)
        {
            Violation("harness: the event queue ran dry before quiescence");
        }

        if (!_quiet)
        {
            Violation($"liveness: not drained {(Scheduler.Executed >= EventBudget ? "within the event budget" : "by the horizon")}: {Unfinished(full: true)}");
        }

        if (Scheduler.Escapes > 0)
        {
            Violation($"harness: {Scheduler.Escapes} continuation(s) escaped to the thread pool");
        }

        foreach (var crash in Scheduler.Crashes)
        {
            Violation("unhandled: " + crash);
        }

        CheckInvariants();
        var confirmed = Count("confirmed");
        var cancelled = Count("cancelled");
        var summary = string.Create(CultureInfo.InvariantCulture,
            $"virtual time {SimScheduler.Format(Scheduler.NowTicks)}s, {Scheduler.Executed} events, {_checkouts.Count} choreographed checkouts ({confirmed} confirmed, {cancelled} cancelled), {Broker.Deliveries} deliveries ({Broker.Lost} lost, {Broker.Duplicated} duplicated, {Broker.Reordered} reordered, {Broker.Redelivered} redelivered), service crashes {string.Join("/", _services.Values.Select(s => s.TotalCrashes))}, {_coordinatorCrashes} coordinator crashes; faults {Faults}");
        Trace(Control, "end: " + summary);
        return new SimResult(_options.Seed, _options, _violations, [], summary, Scheduler.Trace.Tail(), Scheduler.Trace.All, Scheduler.Trace.Hash, Scheduler.Executed, Stats(confirmed, cancelled));
    }

    private long Count(string status) => ChoreographyService.Scalar(_services[Order].Path, "SELECT COUNT(*) FROM orders WHERE status = $s", ("$s", status));

    private void Initialize(ChoreographyService service)
    {
        using var connection = Open(service.Path);
        using (var pragma = connection.CreateCommand())
        {
            pragma.CommandText = "PRAGMA journal_mode=WAL;";
            pragma.ExecuteNonQuery();
        }

        using var schema = connection.CreateCommand();
        schema.CommandText = ChoreographyService.Schema(service.Name);
        schema.ExecuteNonQuery();
        if (service.Name == Payment)
        {
            foreach (var customer in new[] { "alice", "bob", "carol" })
            {
                var balance = (20 + _random.Next(200)) * 100L;
                _initialBalance[customer] = balance;
                Insert(connection, "INSERT INTO wallets (customer, balance_cents, limit_cents) VALUES ($k, $a, $b)", customer, balance, (50 + _random.Next(150)) * 100L);
            }
        }
        else if (service.Name == Inventory)
        {
            foreach (var (sku, _) in Catalogue)
            {
                var stock = sku == "pen" ? 0 : _random.Next(8);
                _initialStock[sku] = stock;
                Insert(connection, "INSERT INTO stock (sku, available, sold) VALUES ($k, $a, 0)", sku, stock, null);
            }
        }

        static void Insert(SqliteConnection connection, string sql, string key, long a, long? b)
        {
            using var insert = connection.CreateCommand();
            insert.CommandText = sql;
            insert.Parameters.AddWithValue("$k", key);
            insert.Parameters.AddWithValue("$a", a);
            insert.Parameters.AddWithValue("$b", (object?)b ?? DBNull.Value);
            insert.ExecuteNonQuery();
        }
    }

    private void BuildWorkload()
    {
        var count = 2 + _random.Next(9);
        var customers = _initialBalance.Keys.ToArray();
        for (var i = 0; i < count; i++)
        {
            var lines = Enumerable.Range(0, Catalogue.Length).OrderBy(j => _random.Next(j < 2 ? 10 : 30)).Take(1 + _random.Next(2))
                .Select(j => new CheckoutLine(Catalogue[j].Sku, 1 + _random.Next(3))).ToList();
            var amount = lines.Sum(l => Catalogue.First(c => c.Sku == l.Sku).PriceCents * l.Qty);
            var checkout = new CheckoutPayload($"co{i + 1}", customers[_random.Next(customers.Length)], amount, lines);
            _checkouts.Add(checkout);
            Scheduler.At(Client, TimeSpan.FromMilliseconds(_random.Next(3_000)), () => SendCheckout(checkout));
        }
    }

    /// <summary>The client's <c>POST /checkout</c>: sent again every second until the Order service answered (the order id makes it idempotent).</summary>
    private void SendCheckout(CheckoutPayload checkout)
    {
        if (_answered.Contains(checkout.OrderId))
        {
            return;
        }

        Scheduler.At(Client, TimeSpan.FromSeconds(1), () =>
        {
            if (!_answered.Contains(checkout.OrderId))
            {
                _clientRetries++;
                SendCheckout(checkout);
            }
        });
        if (Faults.Active && _net.NextDouble() < Faults.LoseDelivery)
        {
            return;
        }

        var order = _services[Order];
        Scheduler.At(Control, Latency(), () =>
        {
            var node = order.Node;
            if (!node.Alive)
            {
                return;
            }

            Scheduler.At(node, TimeSpan.Zero, () => Spawn(async () =>
            {
                var placed = await order.PlaceOrderAsync(checkout);
                _ordersPlaced += placed ? 1 : 0;
                Trace(node, $"POST /checkout {checkout.OrderId}: {(placed ? "placed, order.created in the outbox" : "placed already")}");
                if (!node.Alive || (Faults.Active && _net.NextDouble() < Faults.LoseAck))
                {
                    return;
                }

                Scheduler.At(Client, Latency(), () => _answered.Add(checkout.OrderId));
            }));
        });
    }

    private void ScheduleRandomCrashes()
    {
        foreach (var service in _services.Values)
        {
            for (var i = _random.Next(3); i > 0; i--)
            {
                var at = TimeSpan.FromTicks((long)(_random.NextDouble() * _faultEndTicks));
                Scheduler.At(Control, at, () =>
                {
                    if (service.Up && service.CrashesLeft > 0)
                    {
                        service.CrashesLeft--;
                        service.Crash(CrashPoint.Random, "at a random moment", Downtime());
                    }
                });
            }
        }
    }

    /// <summary>After the faults: looks every 250 ms whether everything is drained.</summary>
    private void Probe()
    {
        if (Unfinished() is null)
        {
            _quiet = true;
            Trace(Control, "drained: every checkout ended, every row sent and reported, nothing unacknowledged");
            return;
        }

        Scheduler.At(Control, TimeSpan.FromMilliseconds(250), Probe);
    }

    /// <summary>What is not drained yet; null when everything is.</summary>
    private string? Unfinished(bool full = false)
    {
        var open = new List<string>();
        if (_services.Values.FirstOrDefault(s => !s.Up) is { } down)
        {
            open.Add($"{down.Name} is down");
        }

        if (!_coordinatorNode.Alive)
        {
            open.Add("the coordinator is down");
        }

        if (_checkouts.Count(c => !_answered.Contains(c.OrderId)) is > 0 and var unanswered)
        {
            open.Add($"{unanswered} checkout(s) unanswered");
        }

        if (Broker.Pending > 0)
        {
            open.Add($"unacknowledged: {Broker.Describe()}");
        }

        var notEnded = _checkouts.Where(c => _store.Peek(c.OrderId) is not { IsTerminal: true }).Select(c => c.OrderId).ToList();
        if (notEnded.Count > 0)
        {
            open.Add($"not ended at the coordinator: {string.Join(",", notEnded)}");
        }

        if (open.Count > 0 && !full)
        {
            return string.Join("; ", open); // the databases are read only once the rest is drained
        }

        foreach (var service in _services.Values)
        {
            if (ChoreographyService.Scalar(service.Path, "SELECT COUNT(*) FROM treaty_outbox WHERE sent_at IS NULL") is > 0 and var unsent)
            {
                open.Add($"{service.Name}: {unsent} outbox row(s) unsent");
            }

            if (ChoreographyService.Scalar(service.Path, "SELECT COUNT(*) FROM treaty_reports WHERE reported_at IS NULL") is > 0 and var unreported)
            {
                open.Add($"{service.Name}: {unreported} event(s) unreported");
            }
        }

        var pending = ChoreographyService.Query(_services[Order].Path, "SELECT order_id FROM orders WHERE status = 'pending' ORDER BY order_id");
        if (pending.Count > 0)
        {
            open.Add($"pending orders: {string.Join(",", pending.Select(r => r[0]))}");
        }

        return open.Count == 0 ? null : string.Join("; ", open);
    }

    private void CheckInvariants()
    {
        var orders = ChoreographyService.Query(_services[Order].Path, "SELECT order_id, customer, amount_cents, status, locked FROM orders")
            .ToDictionary(r => (string)r[0]!, r => (Customer: (string)r[1]!, Amount: (long)r[2]!, Status: (string)r[3]!, Locked: (long)r[4]!), StringComparer.Ordinal);
        var ledger = ChoreographyService.Query(_services[Payment].Path, "SELECT gid, customer, kind, amount_cents FROM ledger ORDER BY id");
        var takes = ChoreographyService.Query(_services[Inventory].Path, "SELECT gid, sku, qty FROM takes ORDER BY id");
        var wallets = ChoreographyService.Query(_services[Payment].Path, "SELECT customer, balance_cents FROM wallets").ToDictionary(r => (string)r[0]!, r => (long)r[1]!, StringComparer.Ordinal);
        var stock = ChoreographyService.Query(_services[Inventory].Path, "SELECT sku, available, sold FROM stock").ToDictionary(r => (string)r[0]!, r => ((long)r[1]!, (long)r[2]!), StringComparer.Ordinal);

        foreach (var checkout in _checkouts)
        {
            var gid = checkout.OrderId;
            var debits = ledger.Count(r => (string)r[0]! == gid && (string)r[2]! == "debit");
            var refunds = ledger.Count(r => (string)r[0]! == gid && (string)r[2]! == "refund");
            var taken = takes.Where(r => (string)r[0]! == gid).Select(r => new CheckoutLine((string)r[1]!, (int)(long)r[2]!)).ToList();
            if (debits > 1)
            {
                Violation($"{gid}: exactly once — debited {debits} times");
            }

            if (refunds > 1)
            {
                Violation($"{gid}: exactly once — refunded {refunds} times");
            }

            if (refunds > debits)
            {
                Violation($"{gid}: refunded without a debit");
            }

            if (taken.GroupBy(l => l.Sku, StringComparer.Ordinal).Any(g => g.Count() > 1))
            {
                Violation($"{gid}: exactly once — stock taken more than once ({string.Join(",", taken.Select(l => $"{l.Sku}x{l.Qty}"))})");
            }

            if (!orders.TryGetValue(gid, out var order))
            {
                Violation($"{gid}: the order was never placed");
                continue;
            }

            if (order.Status is not ("confirmed" or "cancelled"))
            {
                Violation($"{gid}: not terminal at the services — {order.Status}");
            }

            if (order.Locked != 0)
            {
                Violation($"{gid}: the order's lock is still held ({order.Status})");
            }

            var paid = debits == 1 && refunds == 0;
            var allTaken = taken.Count == checkout.Items.Count && checkout.Items.All(l => taken.Contains(l));
            if (order.Status == "confirmed" && !(paid && allTaken))
            {
                Violation($"{gid}: confirmed but {(paid ? "" : $"not paid (debits {debits}, refunds {refunds}) ")}{(allTaken ? "" : "its stock not taken")}");
            }

            if (order.Status == "cancelled" && (debits != refunds || taken.Count > 0))
            {
                Violation($"{gid}: cancelled but {(debits != refunds ? $"charged (debits {debits}, refunds {refunds}) " : "")}{(taken.Count > 0 ? "its stock taken" : "")}");
            }

            // What each service published for it: every event at most once (a handler that ran twice publishes twice).
            foreach (var service in _services.Values)
            {
                foreach (var row in ChoreographyService.Query(service.Path, "SELECT type, COUNT(*) FROM treaty_reports WHERE correlation_id = $g GROUP BY type HAVING COUNT(*) > 1", ("$g", gid)))
                {
                    Violation($"{gid}: exactly once — {service.Name} published {row[0]} {row[1]} times");
                }
            }

            // The coordinator's outcome agrees with the services, and it recorded each published event once.
            var state = _store.Peek(gid);
            var expected = order.Status switch { "confirmed" => TransactionStatus.Committed, "cancelled" => TransactionStatus.Aborted, _ => (TransactionStatus?)null };
            if (state is null)
            {
                Violation($"{gid}: unknown to the coordinator");
            }
            else
            {
                if (expected is { } status && state.Status != status)
                {
                    Violation($"{gid}: the coordinator says {state.Status.ToWire()}, the services {order.Status}");
                }

                var published = _services.Values.SelectMany(s => ChoreographyService.Query(s.Path, "SELECT message_id FROM treaty_reports WHERE correlation_id = $g", ("$g", gid))).Select(r => (string)r[0]!).ToHashSet(StringComparer.Ordinal);
                var recorded = state.Choreography?.MessageIds ?? [];
                if (recorded.Length != recorded.Distinct(StringComparer.Ordinal).Count() || !published.SetEquals(recorded))
                {
                    Violation($"{gid}: the coordinator recorded {recorded.Length} event(s), the services published {published.Count}");
                }
            }
        }

        // Money and stock are conserved: what left the wallets is what confirmed orders cost; what left the shelves is what they hold.
        foreach (var (customer, initial) in _initialBalance)
        {
            var spent = orders.Values.Where(o => o.Customer == customer && o.Status == "confirmed").Sum(o => o.Amount);
            var final = wallets[customer];
            if (final != initial - spent || final < 0)
            {
                Violation($"money: {customer} started with {initial}, confirmed orders cost {spent}, the wallet holds {final}");
            }

            var net = ledger.Where(r => (string)r[1]! == customer).Sum(r => (string)r[2]! == "debit" ? (long)r[3]! : -(long)r[3]!);
            if (net != initial - final)
            {
                Violation($"money: {customer}'s ledger says {net} left, the wallet says {initial - final}");
            }
        }

        foreach (var (sku, initial) in _initialStock)
        {
            var (available, sold) = stock[sku];
            var confirmedQty = _checkouts.Where(c => orders.TryGetValue(c.OrderId, out var o) && o.Status == "confirmed").SelectMany(c => c.Items).Where(l => l.Sku == sku).Sum(l => l.Qty);
            if (available + sold != initial || available < 0 || sold != confirmedQty)
            {
                Violation($"stock: {sku} started at {initial}, now {available} available and {sold} sold; confirmed orders hold {confirmedQty}");
            }
        }

        foreach (var service in _services.Values)
        {
            if (ChoreographyService.Scalar(service.Path, "SELECT COUNT(*) FROM treaty_reports WHERE result NOT IN ('recorded', 'duplicate')") is > 0 and var refused)
            {
                Violation($"{service.Name}: {refused} report(s) the coordinator did not record (refused or ignored)");
            }

            if (ChoreographyService.Scalar(service.Path, "SELECT COUNT(*) FROM treaty_dead_letters") is > 0 and var dead)
            {
                Violation($"{service.Name}: {dead} dead letter(s)");
            }
        }
    }

    private SimStats Stats(long confirmed, long cancelled)
    {
        var services = _services.Values.ToList();
        var stats = new SimStats().Add("seeds", 1)
            .Add("choreography checkouts", _checkouts.Count)
            .Add("choreography confirmed", confirmed)
            .Add("choreography cancelled", cancelled)
            .Add("choreography client-retries", _clientRetries)
            .Add("broker published", Broker.Published)
            .Add("broker deliveries", Broker.Deliveries)
            .Add("broker lost", Broker.Lost)
            .Add("broker duplicated", Broker.Duplicated)
            .Add("broker delayed", Broker.Delayed)
            .Add("broker reordered", Broker.Reordered)
            .Add("broker redelivered", Broker.Redelivered)
            .Add("broker acks-lost", Broker.AcksLost)
            .Add("broker to-down-consumer", Broker.ToDownConsumer)
            .Add("kit publish-failures", services.Sum(s => s.PublishFailures))
            .Add("kit confirms-lost", services.Sum(s => s.ConfirmsLost))
            .Add("kit handler-runs", services.Sum(s => s.HandlerRuns))
            .Add("kit handler-errors", services.Sum(s => s.HandlerErrors))
            .Add("kit inbox-duplicates", services.Sum(s => s.InboxDuplicates))
            .Add("crash after-commit-before-relay", services.Sum(s => s.Crashes(CrashPoint.AfterCommitBeforeRelay)))
            .Add("crash after-publish-before-mark-sent", services.Sum(s => s.Crashes(CrashPoint.AfterPublishBeforeMarkSent)))
            .Add("crash after-inbox-commit-before-ack", services.Sum(s => s.Crashes(CrashPoint.AfterInboxCommitBeforeAck)))
            .Add("crash after-report-answer-before-mark", services.Sum(s => s.Crashes(CrashPoint.AfterReportAnswerBeforeMark)))
            .Add("crash random", services.Sum(s => s.Crashes(CrashPoint.Random)))
            .Add("crash coordinator", _coordinatorCrashes)
            .Add("reports sent", services.Sum(s => s.ReportsSent))
            .Add("reports lost", services.Sum(s => s.ReportsLost))
            .Add("reports duplicates", services.Sum(s => s.ReportDuplicates))
            .Add("reports unanswered", services.Sum(s => s.ReportsUnanswered))
            .Add("reports stuck-alerts", _observer.StuckAlerts);
        return stats;
    }

    /// <summary>One coordinator at a time, restarted under the same name: a restart takes its own
    /// leases back at once, as a restarted instance with a stable id does.</summary>
    private static readonly LeaseRequest SingleCoordinatorLease = new("coordinator", TimeSpan.FromSeconds(15));

    private (SimNode, TransactionEngine) NewCoordinator()
    {
        var node = new SimNode(Scheduler, $"coord#{++_generation}");
        var engine = new TransactionEngine(
            _store, NoCalls.Instance, [new ChoreographyMachine()], Time, new SeededRandomSource(_options.Seed + _generation), NullLogger<TransactionEngine>.Instance, _observer, SingleCoordinatorLease);
        return (node, engine);
    }

    private void StartRecovery(SimNode node, TransactionEngine engine)
    {
        Trace(node, "start (coordinator)");
        Scheduler.At(node, TimeSpan.Zero, () => Spawn(async () =>
        {
            foreach (var gid in await _store.ListDueAsync(DateTimeOffset.MaxValue, int.MaxValue, CancellationToken.None))
            {
                await engine.ResumeAsync(gid, CancellationToken.None);
            }
        }));
        void Scan() => Spawn(async () =>
        {
            Scheduler.At(node, TimeSpan.FromSeconds(5), Scan);
            foreach (var gid in await _store.ListDueAsync(Time.GetUtcNow(), 1000, CancellationToken.None))
            {
                await engine.ResumeAsync(gid, CancellationToken.None);
            }
        });
        Scheduler.At(node, TimeSpan.FromSeconds(5), Scan);
    }

    private WriteFate Fate(TransactionState state, IReadOnlyList<JournalEntry> journal)
    {
        if (!Faults.Active || _coordinatorCrashes >= _maxCoordinatorCrashes)
        {
            return WriteFate.Durable;
        }

        var r = _coordinatorFaults.NextDouble();
        return r < _crashAtWrite / 2 ? WriteFate.CrashBefore : r < _crashAtWrite ? WriteFate.CrashAfter : WriteFate.Durable;
    }

    private void CrashCoordinator(string why)
    {
        if (!_coordinatorNode.Alive)
        {
            return;
        }

        _coordinatorCrashes++;
        _coordinatorNode.Kill();
        Trace(_coordinatorNode, $"CRASH (coordinator) {why}");
        Scheduler.At(Control, TimeSpan.FromMilliseconds(5 + _coordinatorFaults.Next(800)), () =>
        {
            (_coordinatorNode, _engine) = NewCoordinator();
            StartRecovery(_coordinatorNode, _engine);
        });
    }

    private void Cleanup()
    {
        foreach (var service in _services.Values)
        {
            SqliteConnection.ClearPool(new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = service.Path, Pooling = true, DefaultTimeout = 30 }.ToString()));
            SqliteConnection.ClearPool(new SqliteConnection(HarnessConnectionString(service.Path)));
        }

        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
            // a file still open somewhere; the temp directory is cleaned eventually
        }
    }

    private void Violation(string text)
    {
        _violations.Add(text);
        Trace(Control, "VIOLATION " + text);
    }

    private void Trace(SimNode node, string text) => Scheduler.Trace.Add(Scheduler, node.Name, text);

    /// <summary>The coordinator never calls a participant of a choreography.</summary>
    private sealed class NoCalls : IBranchInvoker
    {
        public static readonly NoCalls Instance = new();

        public Task<BranchOutcome> InvokeAsync(BranchCall call, CancellationToken cancellationToken) =>
            throw new InvalidOperationException("a choreography never calls a participant");
    }
}
