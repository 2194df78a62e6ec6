using System.Data.Common;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging.Abstractions;
using Treaty.AspNetCore.Data;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Messaging;
using Treaty.Messaging.Transport;
using KitConsumer = Treaty.Messaging.MessageConsumer;

namespace Treaty.Simulation.Harness.Choreography;

/// <summary>The events of the choreographed checkout (as in samples/Shop/Choreography).</summary>
internal static class ChoreographyEvents
{
    public const string OrderCreated = "order.created";
    public const string PaymentReserved = "payment.reserved";
    public const string PaymentFailed = "payment.failed";
    public const string PaymentRefunded = "payment.refunded";
    public const string InventoryReserved = "inventory.reserved";
    public const string InventoryFailed = "inventory.failed";
    public const string OrderConfirmed = "order.confirmed";
    public const string OrderCancelled = "order.cancelled";

    /// <summary>The Shop's subscriptions: the queue of each service and the types bound to it.</summary>
    public static readonly IReadOnlyList<Subscription> Subscriptions =
    [
        new("payment", [OrderCreated, InventoryFailed]),
        new("inventory", [PaymentReserved]),
        new("order", [InventoryReserved, PaymentFailed, PaymentRefunded]),
    ];
}

/// <summary>One line of an order.</summary>
internal sealed record CheckoutLine(string Sku, int Qty);

/// <summary>What every event of a checkout carries (the Shop's ChoreographyPayload, in cents).</summary>
internal sealed record CheckoutPayload(string OrderId, string Customer, long AmountCents, IReadOnlyList<CheckoutLine> Items, string? Reason = null);

[JsonSerializable(typeof(CheckoutPayload))]
internal sealed partial class ChoreographyJsonContext : JsonSerializerContext;

/// <summary>Where a service process crashed (the seed picks them; <see cref="Random"/> ones strike between two events).</summary>
internal enum CrashPoint
{
    AfterCommitBeforeRelay,
    AfterPublishBeforeMarkSent,
    AfterInboxCommitBeforeAck,
    AfterReportAnswerBeforeMark,
    Random,
}

/// <summary>
/// One service of the choreographed checkout (order, payment or inventory) as a sequence of
/// processes over one SQLite database file: each process has the real messaging kit — an
/// <see cref="Outbox"/> written in the handler's transaction, a <see cref="ConsumerPipeline"/> (the
/// inbox), an <see cref="OutboxRelay"/> running its own loop — and the kit's reporting (<c>ReportTo</c>):
/// the <see cref="ReportWriter"/> writes a <c>treaty_reports</c> row in the publisher's transaction and
/// the real <see cref="ChoreographyReporter"/> loop sends the rows to the coordinator (through a
/// <see cref="SimReportChannel"/> instead of HTTP), marks them once it answered, backs off while it
/// cannot be reached. A crash kills the
/// process (its memory, timers and pending continuations); the next one starts from the database.
/// The handlers rely on the inbox alone for exactly-once (unlike the Shop's, which also check
/// their ledger): the simulation tests the kit, not the handlers' second guard.
/// </summary>
internal sealed class ChoreographyService
{
    private readonly ChoreographyWorld _world;
    private readonly Random _random;
    private readonly MessagingOptions _options;
    private readonly Dictionary<CrashPoint, int> _crashes = [];
    private int _incarnation;
    private int _publishFailures;
    private int _confirmsLost;
    private readonly ChoreographyReportingOptions _reporting;

    public ChoreographyService(ChoreographyWorld world, string name, string path, Random random)
    {
        _world = world;
        Name = name;
        Path = path;
        _random = random;
        _options = new MessagingOptions
        {
            ServiceName = name,
            MaxAttempts = 1_000, // handler failures here are transient: never dead-lettered
            RetryDelay = TimeSpan.FromMilliseconds(50),
            MaxRetryDelay = TimeSpan.FromSeconds(2),
            RelayPollInterval = TimeSpan.FromMilliseconds(200 + random.Next(1_800)),
            RelayBatchSize = 1 + random.Next(8),
        };
        // As the Shop's ReportTo: the decisions end the saga, every other event expects a next one.
        _reporting = new ChoreographyReportingOptions
        {
            NextEventTimeout = TimeSpan.FromMilliseconds(world.NextEventTimeoutMs),
            BatchSize = 1 + random.Next(20),
            PollInterval = TimeSpan.FromMilliseconds(100 + random.Next(900)),
            RetryDelay = TimeSpan.FromMilliseconds(50 + random.Next(200)),
            MaxRetryDelay = TimeSpan.FromSeconds(1 + random.Next(5)),
            RequestTimeout = TimeSpan.FromMilliseconds(500 + random.Next(1_500)),
        }
        .Outcome(ChoreographyEvents.OrderConfirmed, ChoreographyOutcome.Completed)
        .Outcome(ChoreographyEvents.OrderCancelled, ChoreographyOutcome.Compensated);
        Node = new SimNode(world.Scheduler, name + "#0");
        Node.Kill();
    }

    public string Name { get; }

    public string Path { get; }

    public SimNode Node { get; private set; }

    public bool Up => Node.Alive;

    public int CrashesLeft { get; set; }

    public int Crashes(CrashPoint point) => _crashes.GetValueOrDefault(point);

    public int TotalCrashes => _crashes.Values.Sum();

    public int HandlerRuns { get; private set; }

    public int HandlerErrors { get; private set; }

    public int InboxDuplicates { get; private set; }

    public int ReportsSent { get; set; }

    public int ReportsLost { get; set; }

    public int ReportDuplicates { get; set; }

    /// <summary>Reports the coordinator received and never answered (it crashed while recording, or its answer was lost).</summary>
    public int ReportsUnanswered { get; set; }

    public int PublishFailures => _publishFailures + (Transport?.PublishFailures ?? 0);

    public int ConfirmsLost => _confirmsLost + (Transport?.ConfirmsLost ?? 0);

    private Outbox Outbox { get; set; } = null!;

    private ConsumerPipeline Pipeline { get; set; } = null!;

    private SimTransport? Transport { get; set; }

    private SqliteParticipantDatabase Database { get; set; } = null!;

    /// <summary>Starts a new process on the service's database: the relay's loop, the reporter, and the broker redelivers what it had not acknowledged.</summary>
    public void Start()
    {
        if (Transport is { } previous)
        {
            _publishFailures += previous.PublishFailures;
            _confirmsLost += previous.ConfirmsLost;
        }

        var node = Node = new SimNode(_world.Scheduler, $"{Name}#{++_incarnation}");
        var database = Database = new SqliteParticipantDatabase(Path);
        var transport = Transport = new SimTransport(_world.Scheduler, _world.Broker, _world.Faults, _random, () => MaybeCrash(node, CrashPoint.AfterPublishBeforeMarkSent),
            withoutConfirms: _world.Variant == SimVariant.ChoreographyNoPublisherConfirms);
        var relay = new OutboxRelay(database, transport, _options, _world.Time, NullLogger<OutboxRelay>.Instance, _random.NextDouble);
        var channel = new SimReportChannel(_world, this, node, _random, _reporting.RequestTimeout, () => MaybeCrash(node, CrashPoint.AfterReportAnswerBeforeMark));
        var reporter = new ChoreographyReporter(database, channel, _reporting, _world.Time, NullLogger<ChoreographyReporter>.Instance, _random.NextDouble);
        Outbox = new Outbox(Name, _world.Time, () =>
        {
            // The commit that published is durable; the relay is woken only if the process lives on.
            if (!MaybeCrash(node, CrashPoint.AfterCommitBeforeRelay))
            {
                relay.Nudge();
            }
        }, _world.NewMessageId, new ReportWriter(Name, _reporting, reporter.Nudge));
        Pipeline = new ConsumerPipeline(database, _options, _world.Time, NullLogger<ConsumerPipeline>.Instance);
        Trace(node, "start");
        _world.Scheduler.At(node, TimeSpan.Zero, () =>
        {
            _world.Spawn(() => relay.RunAsync(CancellationToken.None));
            _world.Spawn(() => reporter.RunAsync(CancellationToken.None));
            _world.Broker.Reconnected(Name);
        });
    }

    /// <summary>Kills the process; it comes back after <paramref name="down"/>.</summary>
    public void Crash(CrashPoint point, string why, TimeSpan down)
    {
        if (!Up)
        {
            return;
        }

        Node.Kill();
        _crashes[point] = _crashes.GetValueOrDefault(point) + 1;
        Trace(Node, $"CRASH {why}; back in {down.TotalMilliseconds:0} ms");
        _world.Scheduler.At(_world.Control, down, Start);
    }

    private bool MaybeCrash(SimNode node, CrashPoint point)
    {
        var rate = point switch
        {
            CrashPoint.AfterCommitBeforeRelay => _world.Faults.CrashAfterCommit,
            CrashPoint.AfterPublishBeforeMarkSent => _world.Faults.CrashAfterPublish,
            CrashPoint.AfterInboxCommitBeforeAck => _world.Faults.CrashBeforeAck,
            CrashPoint.AfterReportAnswerBeforeMark => _world.Faults.CrashBeforeMark,
            _ => 0,
        };
        if (!_world.Faults.Active || CrashesLeft <= 0 || !node.Alive || !ReferenceEquals(node, Node) || _random.NextDouble() >= rate)
        {
            return false;
        }

        CrashesLeft--;
        var why = point switch
        {
            CrashPoint.AfterCommitBeforeRelay => "after a commit that published, before the relay sent it",
            CrashPoint.AfterPublishBeforeMarkSent => "after the relay published, before it marked the rows sent",
            CrashPoint.AfterReportAnswerBeforeMark => "after the coordinator answered a report, before the reporter marked the rows",
            _ => "after the inbox commit, before the ack",
        };
        Crash(point, why, _world.Downtime());
        return true;
    }

    /// <summary>A delivery from the broker reaches this service: the inbox pipeline handles it, then the service acknowledges it (or asks for it again).</summary>
    public void Receive(TransportMessage message, Action ack, Action nack)
    {
        var node = Node;
        if (!node.Alive)
        {
            _world.Broker.NobodyHome();
            return;
        }

        _world.Scheduler.At(node, TimeSpan.Zero, () => _world.Spawn(async () =>
        {
            var ackedOnArrival = _world.Variant == SimVariant.ChoreographyAckBeforeCommit;
            if (ackedOnArrival)
            {
                ack(); // known-bad: acknowledged before anything is durable
            }

            var ran = false;
            KitConsumer consumer = async (tx, received, ct) =>
            {
                ran = true;
                await HandleAsync(tx, received, ct);
                if (_world.Faults.Active && _random.NextDouble() < _world.Faults.HandlerError)
                {
                    HandlerErrors++;
                    throw new InvalidOperationException("simulated handler failure (after its writes)");
                }

                HandlerRuns++;
            };
            var outcome = _world.Variant == SimVariant.ChoreographyNoInbox
                ? await WithoutInboxAsync(message, consumer)
                : await Pipeline.DeliverAsync(message, consumer, CancellationToken.None);
            if (ackedOnArrival)
            {
                return;
            }

            if (!node.Alive)
            {
                return; // crashed after the commit, before the relay: no ack either
            }

            if (!ran)
            {
                InboxDuplicates++;
            }

            Trace(node, $"{message.Type} {message.CorrelationId}: {(ran ? outcome.ToString() : "duplicate, dropped by the inbox")}");
            if (outcome == DeliveryOutcome.Retry)
            {
                nack();
                return;
            }

            if (MaybeCrash(node, CrashPoint.AfterInboxCommitBeforeAck))
            {
                return;
            }

            ack();
        }));
    }

    /// <summary>Known-bad: the handler in a transaction of its own, no inbox row, so nothing drops a redelivery.</summary>
    private async Task<DeliveryOutcome> WithoutInboxAsync(TransportMessage message, KitConsumer consumer)
    {
        try
        {
            await using var tx = await Database.BeginAsync(CancellationToken.None);
            await consumer(tx, new ReceivedMessage(message.MessageId, message.Type, message.CorrelationId, message.Body, message.TraceParent, message.Source, message.CreatedAt, 1), CancellationToken.None);
            await tx.CommitAsync(CancellationToken.None);
            return DeliveryOutcome.Handled;
        }
        catch (InvalidOperationException)
        {
            return DeliveryOutcome.Retry;
        }
    }

    /// <summary>The Order service takes a checkout: the order (pending, its lock held) and <c>order.created</c> in one transaction. Idempotent on the order id.</summary>
    public async Task<bool> PlaceOrderAsync(CheckoutPayload payload)
    {
        await using var tx = await Database.BeginAsync(CancellationToken.None);
        await using (var exists = tx.CreateCommand("SELECT 1 FROM orders WHERE order_id = @id", ("id", payload.OrderId)))
        {
            if (await exists.ExecuteScalarAsync(CancellationToken.None) is not null)
            {
                await tx.CommitAsync(CancellationToken.None);
                return false;
            }
        }

        await Execute(tx, "INSERT INTO orders (order_id, customer, amount_cents, items, status, locked) VALUES (@id, @customer, @amount, @items, 'pending', 1)",
            ("id", payload.OrderId), ("customer", payload.Customer), ("amount", payload.AmountCents),
            ("items", string.Join(",", payload.Items.Select(i => $"{i.Sku}x{i.Qty.ToString(CultureInfo.InvariantCulture)}"))));
        await PublishAsync(tx, ChoreographyEvents.OrderCreated, payload);
        await tx.CommitAsync(CancellationToken.None);
        return true;
    }

    private Task HandleAsync(ParticipantTransaction tx, ReceivedMessage message, CancellationToken ct)
    {
        var payload = message.Read(ChoreographyJsonContext.Default.CheckoutPayload)
            ?? throw new InvalidOperationException($"{message.Type} without a payload");
        return message.Type switch
        {
            ChoreographyEvents.OrderCreated => DebitAsync(tx, payload),
            ChoreographyEvents.InventoryFailed => RefundAsync(tx, payload),
            ChoreographyEvents.PaymentReserved => TakeStockAsync(tx, payload),
            ChoreographyEvents.InventoryReserved => DecideOrderAsync(tx, payload, confirm: true),
            ChoreographyEvents.PaymentFailed or ChoreographyEvents.PaymentRefunded => DecideOrderAsync(tx, payload, confirm: false),
            _ => throw new InvalidOperationException($"{Name} does not handle {message.Type}"),
        };
    }

    private async Task DebitAsync(ParticipantTransaction tx, CheckoutPayload payload)
    {
        long? balance = null, limit = null;
        await using (var wallet = tx.CreateCommand("SELECT balance_cents, limit_cents FROM wallets WHERE customer = @c", ("c", payload.Customer)))
        await using (var reader = await wallet.ExecuteReaderAsync(CancellationToken.None))
        {
            if (await reader.ReadAsync(CancellationToken.None))
            {
                (balance, limit) = (reader.GetInt64(0), reader.GetInt64(1));
            }
        }

        var refusal = balance is null ? $"no wallet for {payload.Customer}"
            : payload.AmountCents > limit ? $"{payload.AmountCents} over the limit {limit}"
            : payload.AmountCents > balance ? $"balance {balance} does not cover {payload.AmountCents}"
            : null;
        if (refusal is not null)
        {
            await PublishAsync(tx, ChoreographyEvents.PaymentFailed, payload with { Reason = refusal });
            return;
        }

        await Execute(tx, "UPDATE wallets SET balance_cents = balance_cents - @a WHERE customer = @c", ("a", payload.AmountCents), ("c", payload.Customer));
        await Execute(tx, "INSERT INTO ledger (gid, customer, kind, amount_cents) VALUES (@g, @c, 'debit', @a)", ("g", payload.OrderId), ("c", payload.Customer), ("a", payload.AmountCents));
        await PublishAsync(tx, ChoreographyEvents.PaymentReserved, payload);
    }

    private async Task RefundAsync(ParticipantTransaction tx, CheckoutPayload payload)
    {
        await Execute(tx, "UPDATE wallets SET balance_cents = balance_cents + @a WHERE customer = @c", ("a", payload.AmountCents), ("c", payload.Customer));
        await Execute(tx, "INSERT INTO ledger (gid, customer, kind, amount_cents) VALUES (@g, @c, 'refund', @a)", ("g", payload.OrderId), ("c", payload.Customer), ("a", payload.AmountCents));
        await PublishAsync(tx, ChoreographyEvents.PaymentRefunded, payload);
    }

    private async Task TakeStockAsync(ParticipantTransaction tx, CheckoutPayload payload)
    {
        foreach (var line in payload.Items)
        {
            await using var stock = tx.CreateCommand("SELECT available FROM stock WHERE sku = @s", ("s", line.Sku));
            var available = await stock.ExecuteScalarAsync(CancellationToken.None) is { } value ? Convert.ToInt64(value, CultureInfo.InvariantCulture) : (long?)null;
            if (available is null || available < line.Qty)
            {
                var reason = available is null ? $"no SKU {line.Sku}" : $"{line.Sku}: {available} available, {line.Qty} requested";
                await PublishAsync(tx, ChoreographyEvents.InventoryFailed, payload with { Reason = reason });
                return;
            }
        }

        foreach (var line in payload.Items)
        {
            await Execute(tx, "UPDATE stock SET available = available - @q, sold = sold + @q WHERE sku = @s", ("q", line.Qty), ("s", line.Sku));
            await Execute(tx, "INSERT INTO takes (gid, sku, qty) VALUES (@g, @s, @q)", ("g", payload.OrderId), ("s", line.Sku), ("q", line.Qty));
        }

        await PublishAsync(tx, ChoreographyEvents.InventoryReserved, payload);
    }

    private async Task DecideOrderAsync(ParticipantTransaction tx, CheckoutPayload payload, bool confirm)
    {
        await using (var order = tx.CreateCommand("SELECT status FROM orders WHERE order_id = @id", ("id", payload.OrderId)))
        {
            if (await order.ExecuteScalarAsync(CancellationToken.None) is not "pending")
            {
                return; // decided already, as the Shop's order handler
            }
        }

        await Execute(tx, "UPDATE orders SET status = @s, locked = 0, reason = @r WHERE order_id = @id",
            ("s", confirm ? "confirmed" : "cancelled"), ("r", confirm ? null : payload.Reason), ("id", payload.OrderId));
        await PublishAsync(tx, confirm ? ChoreographyEvents.OrderConfirmed : ChoreographyEvents.OrderCancelled, payload);
    }

    /// <summary>The event through the outbox, which writes its report row in the same transaction (the outcome comes from the per-type options).</summary>
    private Task PublishAsync(ParticipantTransaction tx, string type, CheckoutPayload payload) =>
        Outbox.PublishAsync(tx, type, payload.OrderId, payload, ChoreographyJsonContext.Default.CheckoutPayload, CancellationToken.None);

    private static async Task Execute(ParticipantTransaction tx, string sql, params (string, object?)[] parameters)
    {
        await using var command = tx.CreateCommand(sql, parameters);
        await command.ExecuteNonQueryAsync(CancellationToken.None);
    }

    private void Trace(SimNode node, string text) => _world.Scheduler.Trace.Add(_world.Scheduler, node.Name, text);

    /// <summary>The schema of one service's database: the kit's tables (treaty_reports among them) and its own.</summary>
    public static string Schema(string name) => MessagingSql.Schema(SqlDialect.Sqlite) + name switch
    {
        "order" => "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, amount_cents INTEGER NOT NULL, items TEXT NOT NULL, status TEXT NOT NULL, locked INTEGER NOT NULL, reason TEXT);",
        "payment" => "CREATE TABLE wallets (customer TEXT PRIMARY KEY, balance_cents INTEGER NOT NULL, limit_cents INTEGER NOT NULL);"
            + "CREATE TABLE ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, gid TEXT NOT NULL, customer TEXT NOT NULL, kind TEXT NOT NULL, amount_cents INTEGER NOT NULL);",
        _ => "CREATE TABLE stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL, sold INTEGER NOT NULL);"
            + "CREATE TABLE takes (id INTEGER PRIMARY KEY AUTOINCREMENT, gid TEXT NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL);",
    };

    /// <summary>Reads rows of <paramref name="sql"/> from a database, for the invariants.</summary>
    public static List<object?[]> Query(string path, string sql, params (string Name, object Value)[] parameters)
    {
        using var connection = ChoreographyWorld.Open(path);
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        foreach (var (name, value) in parameters)
        {
            command.Parameters.AddWithValue(name, value);
        }

        using DbDataReader reader = command.ExecuteReader();
        var rows = new List<object?[]>();
        while (reader.Read())
        {
            var row = new object?[reader.FieldCount];
            for (var i = 0; i < row.Length; i++)
            {
                row[i] = reader.IsDBNull(i) ? null : reader.GetValue(i);
            }

            rows.Add(row);
        }

        return rows;
    }

    public static long Scalar(string path, string sql, params (string Name, object Value)[] parameters) =>
        Query(path, sql, parameters) is [[var value, ..], ..] && value is not null ? Convert.ToInt64(value, CultureInfo.InvariantCulture) : 0;
}
