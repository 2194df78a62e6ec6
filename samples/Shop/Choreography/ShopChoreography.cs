using Microsoft.AspNetCore.Builder;
using Microsoft.Data.Sqlite;
using Shop.Infrastructure;
using Shop.Inventory;
using Shop.Order;
using Shop.Payment;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.SemanticLocks;
using Treaty.Core.Model;
using Treaty.Messaging;
using Treaty.Messaging.RabbitMq;
using Treaty.Messaging.Transport;

namespace Shop.Choreography;

/// <summary>The events of the choreographed checkout.</summary>
internal static class ShopEvents
{
    public const string OrderCreated = "order.created";
    public const string PaymentReserved = "payment.reserved";
    public const string PaymentFailed = "payment.failed";
    public const string PaymentRefunded = "payment.refunded";
    public const string InventoryReserved = "inventory.reserved";
    public const string InventoryFailed = "inventory.failed";
    public const string OrderConfirmed = "order.confirmed";
    public const string OrderCancelled = "order.cancelled";

    /// <summary>How long the coordinator waits for the next event before it flags the saga as stuck.</summary>
    public static readonly TimeSpan NextEventTimeout = TimeSpan.FromSeconds(30);
}

/// <summary>What every event of a checkout carries: enough for each handler to act on the state it finds.</summary>
internal sealed record ChoreographyPayload(string OrderId, string CustomerId, decimal Amount, IReadOnlyList<OrderItem> Items, string? Reason = null);

/// <summary>
/// The Shop's choreographed checkout (<c>protocol: "choreography"</c>): no orchestrator. Each service
/// handles the events of the others in its inbox transaction and publishes its own through its
/// outbox in that same transaction; the messaging kit reports what was published to the coordinator
/// (<c>ReportTo</c>), so the saga shows as a timeline there.
/// <code>
/// order.created → payment: debit → payment.reserved | payment.failed
/// payment.reserved → inventory: take the stock → inventory.reserved | inventory.failed
/// inventory.failed → payment: refund → payment.refunded
/// inventory.reserved → order: CONFIRMED (order.confirmed); payment.failed | payment.refunded → order: CANCELLED (order.cancelled)
/// </code>
/// Inventory's step is the pivot: once the stock is taken nothing after it can fail, so it is sold
/// at once (nothing stays held) and the order's confirmation cannot be refused.
/// </summary>
internal static class ShopChoreography
{
    /// <summary>The exchange the three services share on RabbitMQ (<c>--transport rabbitmq</c>).</summary>
    public const string RabbitMqExchange = "treaty.shop";

    /// <summary>
    /// True when the service can run the choreography: it knows the coordinator and either the broker
    /// (<c>--transport rabbitmq</c>) or the three services' addresses (the embedded transport routes by them).
    /// </summary>
    public static bool Enabled(ShopOptions options) =>
        options.CoordinatorUrl is not null && (options.Transport == ShopTransport.RabbitMq
            || (options.OrderUrl is not null && options.PaymentUrl is not null && options.InventoryUrl is not null));

    /// <summary>The events each service consumes: its subscription, and on RabbitMQ its queue's bindings.</summary>
    public static IReadOnlyList<Subscription> Subscriptions { get; } =
    [
        new("payment", [ShopEvents.OrderCreated, ShopEvents.InventoryFailed]),
        new("inventory", [ShopEvents.PaymentReserved]),
        new("order", [ShopEvents.InventoryReserved, ShopEvents.PaymentFailed, ShopEvents.PaymentRefunded]),
    ];

    public static void Add(WebApplicationBuilder builder, ShopOptions options)
    {
        var name = options.Service.ToString().ToLowerInvariant();
        builder.Services.AddSingleton(provider => new ChoreographyPublisher(provider.GetRequiredService<Outbox>()));

        if (options.Transport == ShopTransport.RabbitMq)
        {
            // Registered before the messaging kit, so its hosted service runs first: every service declares the
            // three services' queues at startup, whichever starts first, before its outbox publishes anything
            // (the exchange drops an event no queue is bound to yet).
            builder.Services.UseRabbitMq(new Uri(options.RabbitMqUri!), o =>
            {
                o.ExchangeName = RabbitMqExchange;
                o.ConnectionName = "shop-" + name;
            });
            builder.Services.AddHostedService(provider => new RabbitMqQueuesDeclarer(provider.GetRequiredService<IMessageTransport>()));
        }

        // Every event published is reported to the coordinator, in the transaction that publishes it:
        // the checkout's outcome is the order's last event, and the coordinator flags a checkout stuck
        // when its next event does not come within the timeout.
        var messaging = builder.Services.AddTreatyMessaging(o => o.ServiceName = name)
            .ReportTo(new Uri(options.CoordinatorUrl!), options.CoordinatorKey, report =>
            {
                report.NextEventTimeout = ShopEvents.NextEventTimeout;
                report.Outcome(ShopEvents.OrderConfirmed, ChoreographyOutcome.Completed);
                report.Outcome(ShopEvents.OrderCancelled, ChoreographyOutcome.Compensated);
            });
        var wallet = new WalletChoreography(options.TimeProvider);
        var stock = new StockChoreography(options.TimeProvider);
        switch (options.Service)
        {
            case ShopService.Payment:
                messaging.Subscribe(ShopEvents.OrderCreated, p => Handler(p, wallet.OnOrderCreatedAsync));
                messaging.Subscribe(ShopEvents.InventoryFailed, p => Handler(p, wallet.OnInventoryFailedAsync));
                break;
            case ShopService.Inventory:
                messaging.Subscribe(ShopEvents.PaymentReserved, p => Handler(p, stock.OnPaymentReservedAsync));
                break;
            case ShopService.Order:
                messaging.Subscribe(ShopEvents.InventoryReserved, p => OrderHandler(p, confirm: true));
                messaging.Subscribe(ShopEvents.PaymentFailed, p => OrderHandler(p, confirm: false));
                messaging.Subscribe(ShopEvents.PaymentRefunded, p => OrderHandler(p, confirm: false));
                break;
        }

        if (options.EnableFaults)
        {
            // The crash points the tests arm over /_faults (holdAfterCommit, holdAfterSend); inert until armed.
            MessageFaults.Decorate(builder.Services);
        }

        if (options.Transport == ShopTransport.RabbitMq)
        {
            return; // the registered RabbitMQ transport wins over the embedded default
        }

        var order = new Uri(options.OrderUrl!.TrimEnd('/') + "/");
        var payment = new Uri(options.PaymentUrl!.TrimEnd('/') + "/");
        var inventory = new Uri(options.InventoryUrl!.TrimEnd('/') + "/");
        messaging.UseEmbeddedTransport(routes => routes
            .Route(ShopEvents.OrderCreated, payment)
            .Route(ShopEvents.PaymentReserved, inventory)
            .Route(ShopEvents.PaymentFailed, order)
            .Route(ShopEvents.InventoryReserved, order)
            .Route(ShopEvents.InventoryFailed, payment)
            .Route(ShopEvents.PaymentRefunded, order));
    }

    private static MessageConsumer Handler(IServiceProvider provider, Func<ParticipantTransaction, ChoreographyPayload, string, ChoreographyPublisher, CancellationToken, Task> handle)
    {
        var publisher = provider.GetRequiredService<ChoreographyPublisher>();
        return (tx, message, ct) =>
        {
            MessageFaults.ConsumerRan();
            return handle(tx, Read(message), message.CorrelationId, publisher, ct);
        };
    }

    private static MessageConsumer OrderHandler(IServiceProvider provider, bool confirm)
    {
        var publisher = provider.GetRequiredService<ChoreographyPublisher>();
        var locks = provider.GetRequiredService<SemanticLockManager>();
        var time = provider.GetRequiredService<TimeProvider>();
        return async (tx, message, ct) =>
        {
            MessageFaults.ConsumerRan();
            var payload = Read(message);
            var (connection, transaction) = ShopTransaction.Of(tx);
            var order = await OrderStore.FindAsync(connection, transaction, payload.OrderId, ct);
            if (order is null || order.Status != OrderStatus.Pending)
            {
                return; // decided already (a late or repeated event under another id): nothing to change
            }

            var status = confirm ? OrderStatus.Confirmed : OrderStatus.Cancelled;
            var reason = confirm ? null : payload.Reason ?? "the checkout was compensated";
            await OrderStore.SetStatusAsync(connection, transaction, order.OrderId, status, reason, time.GetUtcNow(), ct);
            await locks.ReleaseAsync(tx, OrderStore.LockOf(order.OrderId), order.Gid, ct);
            await publisher.PublishAsync(tx, confirm ? ShopEvents.OrderConfirmed : ShopEvents.OrderCancelled, order.Gid, payload with { Reason = reason }, ct);
        };
    }

    private static ChoreographyPayload Read(ReceivedMessage message) =>
        message.Read(ShopJsonContext.Web.ChoreographyPayload) ?? throw new InvalidOperationException($"{message.Type} {message.MessageId} has no checkout payload.");
}

/// <summary>Declares the three services' queues on RabbitMQ at startup (idempotent: the same topology every time).</summary>
internal sealed class RabbitMqQueuesDeclarer(IMessageTransport transport) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var rabbit = MessageFaults.Unwrap(transport) as RabbitMqTransport ?? throw new InvalidOperationException($"Expected the RabbitMQ transport, found {transport.GetType().Name}.");
        foreach (var subscription in ShopChoreography.Subscriptions)
        {
            await rabbit.DeclareSubscriptionAsync(subscription, cancellationToken);
        }
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}

/// <summary>
/// Publishes a checkout event through the outbox, in the caller's transaction; the kit writes its
/// report to the coordinator in that transaction too (<c>ReportTo</c> in <see cref="ShopChoreography.Add"/>).
/// </summary>
internal sealed class ChoreographyPublisher(Outbox outbox)
{
    public Task<string> PublishAsync(ParticipantTransaction tx, string type, string gid, ChoreographyPayload payload, CancellationToken ct) =>
        outbox.PublishAsync(tx, type, gid, payload, ShopJsonContext.Web.ChoreographyPayload, ct);
}

/// <summary>Payment's side: the wallet debit and its refund (the saga's effects, driven by events).</summary>
internal sealed class WalletChoreography(TimeProvider time)
{
    public async Task OnOrderCreatedAsync(ParticipantTransaction tx, ChoreographyPayload payload, string gid, ChoreographyPublisher publisher, CancellationToken ct)
    {
        var (connection, transaction) = ShopTransaction.Of(tx);
        if (await LedgerAsync(connection, transaction, gid, "debit", ct))
        {
            return; // debited already for this checkout: never twice
        }

        var wallet = await WalletQueries.FindAsync(connection, transaction, payload.CustomerId, ct);
        var refusal = wallet switch
        {
            null => $"There is no wallet for customer '{payload.CustomerId}'.",
            { LockedBy: { } holder } => throw new InvalidOperationException($"The wallet of '{payload.CustomerId}' is locked by {holder}; retried."),
            _ when payload.Amount > wallet.Limit => $"The amount {payload.Amount} exceeds the per-order limit {wallet.Limit} of customer '{payload.CustomerId}'.",
            _ when payload.Amount > wallet.Balance => $"The balance {wallet.Balance} of customer '{payload.CustomerId}' does not cover {payload.Amount}.",
            _ => null,
        };
        if (refusal is not null)
        {
            await publisher.PublishAsync(tx, ShopEvents.PaymentFailed, gid, payload with { Reason = refusal }, ct);
            return;
        }

        var cents = CentsOf(payload);
        await Sql.ExecuteAsync(connection, transaction,
            "UPDATE wallets SET balance_cents = balance_cents - $amount WHERE customer_id = $id", ct, ("$amount", cents), ("$id", payload.CustomerId));
        await InsertLedgerAsync(connection, transaction, gid, payload.CustomerId, "debit", cents, ct);
        await publisher.PublishAsync(tx, ShopEvents.PaymentReserved, gid, payload, ct);
    }

    public async Task OnInventoryFailedAsync(ParticipantTransaction tx, ChoreographyPayload payload, string gid, ChoreographyPublisher publisher, CancellationToken ct)
    {
        var (connection, transaction) = ShopTransaction.Of(tx);
        if (!await LedgerAsync(connection, transaction, gid, "debit", ct) || await LedgerAsync(connection, transaction, gid, "refund", ct))
        {
            return; // nothing debited, or refunded already
        }

        var cents = CentsOf(payload);
        await Sql.ExecuteAsync(connection, transaction,
            "UPDATE wallets SET balance_cents = balance_cents + $amount WHERE customer_id = $id", ct, ("$amount", cents), ("$id", payload.CustomerId));
        await InsertLedgerAsync(connection, transaction, gid, payload.CustomerId, "refund", cents, ct);
        await publisher.PublishAsync(tx, ShopEvents.PaymentRefunded, gid, payload, ct);
    }

    private static long CentsOf(ChoreographyPayload payload) =>
        Money.TryToCents(payload.Amount, out var cents) ? cents : throw new InvalidOperationException($"Bad amount {payload.Amount} in order {payload.OrderId}.");

    private static async Task<bool> LedgerAsync(SqliteConnection connection, SqliteTransaction transaction, string gid, string kind, CancellationToken ct)
    {
        await using var command = Sql.Command(connection, transaction, "SELECT 1 FROM ledger WHERE gid = $gid AND kind = $kind", ("$gid", gid), ("$kind", kind));
        return await command.ExecuteScalarAsync(ct) is not null;
    }

    private Task<int> InsertLedgerAsync(SqliteConnection connection, SqliteTransaction transaction, string gid, string customerId, string kind, long cents, CancellationToken ct) =>
        Sql.ExecuteAsync(connection, transaction,
            "INSERT INTO ledger (gid, customer_id, kind, amount_cents, at) VALUES ($gid, $id, $kind, $amount, $at)", ct,
            ("$gid", gid), ("$id", customerId), ("$kind", kind), ("$amount", cents), ("$at", Sql.Timestamp(time.GetUtcNow())));
}

/// <summary>Inventory's side: takes the whole order's stock or none of it.</summary>
internal sealed class StockChoreography(TimeProvider time)
{
    public async Task OnPaymentReservedAsync(ParticipantTransaction tx, ChoreographyPayload payload, string gid, ChoreographyPublisher publisher, CancellationToken ct)
    {
        var (connection, transaction) = ShopTransaction.Of(tx);
        await using (var taken = Sql.Command(connection, transaction, "SELECT 1 FROM holds WHERE gid = $gid LIMIT 1", ("$gid", gid)))
        {
            if (await taken.ExecuteScalarAsync(ct) is not null)
            {
                return; // taken already for this checkout
            }
        }

        var items = payload.Items.GroupBy(i => i.Sku, StringComparer.Ordinal).Select(g => new OrderItem(g.Key, g.Sum(i => i.Qty))).ToList();
        foreach (var item in items) // check every line before touching any
        {
            var row = await StockQueries.FindAsync(connection, transaction, item.Sku, ct);
            var refusal = row switch
            {
                null => $"There is no SKU '{item.Sku}'.",
                { LockedBy: { } holder } => throw new InvalidOperationException($"'{item.Sku}' is locked by {holder}; retried."),
                _ when row.Available < item.Qty => $"Out of stock: '{item.Sku}' has {row.Available} available, {item.Qty} requested.",
                _ => null,
            };
            if (refusal is not null)
            {
                await publisher.PublishAsync(tx, ShopEvents.InventoryFailed, gid, payload with { Reason = refusal }, ct);
                return;
            }
        }

        var now = Sql.Timestamp(time.GetUtcNow());
        foreach (var item in items)
        {
            await Sql.ExecuteAsync(connection, transaction,
                "UPDATE stock SET available = available - $qty, sold = sold + $qty WHERE sku = $sku", ct, ("$qty", item.Qty), ("$sku", item.Sku));
            await Sql.ExecuteAsync(connection, transaction,
                "INSERT INTO holds (gid, sku, qty, order_id, state, at, settled_at) VALUES ($gid, $sku, $qty, $order, 'sold', $at, $at)", ct,
                ("$gid", gid), ("$sku", item.Sku), ("$qty", item.Qty), ("$order", payload.OrderId), ("$at", now));
        }

        await publisher.PublishAsync(tx, ShopEvents.InventoryReserved, gid, payload, ct);
    }
}
