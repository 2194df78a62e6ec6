using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Shop.Infrastructure;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.Idempotency;
using Treaty.AspNetCore.SemanticLocks;
using Treaty.Core.Contracts;
using Treaty.Core.Diagnostics;

namespace Shop.Order;

/// <summary>
/// Checkout and orders, on the participant kit. <c>POST /checkout</c> requires an
/// <c>Idempotency-Key</c> (the kit answers 400 without one, replays a completed checkout with
/// <c>Idempotent-Replayed: true</c>, and answers 409 for a key reused with another body or still in
/// flight). The handler writes, in the kit's transaction that also stores its 202: the order
/// (PENDING, outbox mark <c>unsent</c>) and its semantic lock <c>order/{id}</c> for the saga's gid.
/// The saga <c>order → payment → inventory → confirm (pivot) → stock</c> is submitted after that
/// commit by the <see cref="OrderOutbox"/>. The order's branch endpoints (behind the kit's barrier)
/// move it to CONFIRMED or CANCELLED and drop the lock; while the lock is held, readers see
/// <c>processing: true</c>.
/// </summary>
internal sealed partial class OrderService(ShopDatabase database, OrderTransaction saga, SemanticLockManager locks, TimeProvider timeProvider, ILogger<OrderService> logger)
{
    /// <summary>Set by <see cref="AbortReasonMiddleware"/> for the cancel handler: fetched before the kit's transaction.</summary>
    private const string AbortReasonItem = "shop.order.abort-reason";

    /// <summary>The checkout driven by events between the services (<see cref="Choreography.ShopChoreography"/>), not by the coordinator.</summary>
    public const string ChoreographyProtocol = "choreography";

    private const int MaxCustomerIdLength = 64;
    private const int MaxItems = 20;
    private const int MaxQty = 1000;
    private static readonly TimeSpan ReasonLookupTimeout = TimeSpan.FromSeconds(2);

    public static void Map(WebApplication app)
    {
        var service = app.Services.GetRequiredService<OrderService>();
        var outbox = app.Services.GetRequiredService<OrderOutbox>();
        app.MapPost("/checkout", Endpoints.Handler(http => service.CheckoutAsync(http, outbox))).WithIdempotencyKey(required: true);
        app.MapGet("/orders", service.ListAsync);
        app.MapGet("/orders/{id}", service.GetAsync);
        OrderEndpoints.Map(app, service);
    }

    /// <summary>
    /// Asks the coordinator why a transaction aborted before the cancel's branch handler runs: the
    /// handler runs inside the kit's transaction, which holds the SQLite write turn, and must not
    /// wait on the network. Runs after signature verification.
    /// </summary>
    public static async Task AbortReasonMiddleware(HttpContext http, RequestDelegate next)
    {
        if (HttpMethods.IsPost(http.Request.Method)
            && http.Request.Path.Value is { } path && path.Contains("/order/", StringComparison.OrdinalIgnoreCase)
            && http.Request.Headers["Treaty-Op"].ToString() is "compensate" or "cancel" or "rollback" or "abort"
            && http.Request.Headers["Treaty-Gid"].ToString() is { Length: > 0 and <= 256 } gid)
        {
            var service = http.RequestServices.GetRequiredService<OrderService>();
            http.Items[AbortReasonItem] = await service.AbortReasonAsync(gid, http.RequestAborted);
        }

        await next(http);
    }

    private async Task<IResult> CheckoutAsync(HttpContext http, OrderOutbox outbox)
    {
        // The kit's transaction: the order written here commits with the stored answer, or not at all.
        var transaction = http.GetParticipantTransaction()
            ?? throw new InvalidOperationException("POST /checkout runs behind the Idempotency-Key middleware.");
        var ct = http.RequestAborted; // the kit's: only the host's shutdown cancels it
        var (request, error) = await JsonBody.ReadAsync(http.Request, ShopJsonContext.Web.CheckoutRequest, ct);
        if (request is null)
        {
            return error!;
        }

        var (checkout, errors) = Validate(request);
        if (checkout is null)
        {
            return Problems.Validation(errors);
        }

        var choreography = checkout.Protocol == ChoreographyProtocol;
        var publisher = choreography ? http.RequestServices.GetService<Choreography.ChoreographyPublisher>() : null;
        if (choreography && publisher is null)
        {
            return Problems.Validation(new Dictionary<string, string[]>(StringComparer.Ordinal)
            {
                ["protocol"] = ["Protocol 'choreography' needs the service started with --order, --payment, --inventory and --coordinator."],
            });
        }

        var now = timeProvider.GetUtcNow();
        var orderId = NewOrderId();
        // A choreographed order is never submitted to the coordinator: its events drive it.
        var order = new OrderRow(orderId, OrderTransaction.GidOf(orderId), checkout.CustomerId, checkout.AmountCents, checkout.Items,
            OrderStatus.Pending, null, choreography ? SubmitState.Accepted : SubmitState.Unsent, now, now, checkout.Protocol);
        var (connection, sqlite) = ShopTransaction.Of(transaction);
        await OrderStore.InsertAsync(connection, sqlite, order, ct);
        // PENDING until its saga confirms or cancels it: readers see it as processing.
        await locks.TryAcquireAsync(transaction, OrderStore.LockOf(orderId), order.Gid, ct);
        if (publisher is not null)
        {
            // In the kit's transaction: the order, its stored 202 and order.created commit together.
            await publisher.PublishAsync(transaction, Choreography.ShopEvents.OrderCreated, order.Gid,
                new Choreography.ChoreographyPayload(orderId, checkout.CustomerId, Money.FromCents(checkout.AmountCents), checkout.Items), ct);
        }

        http.Items[FaultEndpoints.CheckoutCommittedItem] = orderId;
        // After the kit's commit and the answer: submit now (the outbox's loop would, a moment later).
        http.Response.OnCompleted(() =>
        {
            outbox.Poke();
            return Task.CompletedTask;
        });
        http.Response.Headers.Location = "/orders/" + Uri.EscapeDataString(orderId);
        return Results.Json(new CheckoutResponse(orderId, order.Gid, OrderStatus.Processing), ShopJsonContext.Web.CheckoutResponse,
            statusCode: StatusCodes.Status202Accepted);
    }

    /// <summary>Stores how a submit ended: accepted, or rejected for good (the order is cancelled).</summary>
    public async Task RecordSubmitAsync(OrderRow order, SubmitOutcome outcome, string? detail, CancellationToken ct)
    {
        if (outcome == SubmitOutcome.Unavailable)
        {
            return;
        }

        var now = timeProvider.GetUtcNow();
        await database.WriteAsync(async participant =>
        {
            var (connection, transaction) = ShopTransaction.Of(participant);
            var changed = await OrderStore.SetSubmitStateAsync(connection, transaction, order.OrderId,
                outcome == SubmitOutcome.Accepted ? SubmitState.Accepted : SubmitState.Rejected, now, ct);
            if (changed == 1 && outcome == SubmitOutcome.Rejected)
            {
                await OrderStore.SetStatusAsync(connection, transaction, order.OrderId, OrderStatus.Cancelled,
                    "the coordinator rejected the transaction: " + detail, now, ct);
                await locks.ReleaseAsync(participant, OrderStore.LockOf(order.OrderId), order.Gid, ct);
            }

            return changed;
        }, ct);
    }

    /// <summary>An accepted order left PENDING although its saga aborted: CANCELLED, lock dropped.</summary>
    public async Task CancelStaleAsync(OrderRow order, string reason, CancellationToken ct)
    {
        var now = timeProvider.GetUtcNow();
        await database.WriteAsync(async participant =>
        {
            var (connection, transaction) = ShopTransaction.Of(participant);
            var current = await OrderStore.FindAsync(connection, transaction, order.OrderId, ct);
            if (current?.Status != OrderStatus.Pending)
            {
                return 0;
            }

            await OrderStore.SetStatusAsync(connection, transaction, order.OrderId, OrderStatus.Cancelled, reason, now, ct);
            await locks.ReleaseAsync(participant, OrderStore.LockOf(order.OrderId), order.Gid, ct);
            return 1;
        }, ct);
    }

    private async Task<IResult> ListAsync(string? status, CancellationToken ct)
    {
        var rows = await database.ReadAsync(c => OrderStore.ListAsync(c, status, ct), ct);
        return Results.Json(new OrderListView([.. rows.Select(r => r.ToView())]), ShopJsonContext.Web.OrderListView);
    }

    private async Task<IResult> GetAsync(string id, CancellationToken ct)
    {
        var row = await database.ReadAsync(c => OrderStore.FindAsync(c, null, id, ct), ct);
        return row is null
            ? Problems.NotFound($"No order '{id}'.")
            : Results.Json(row.ToView(), ShopJsonContext.Web.OrderView);
    }

    /// <summary>
    /// The order's first op under every protocol (saga create, TCC try, 2PC prepare, 3PC canCommit):
    /// the order exists PENDING under its transaction's lock. Checkout stored it already; a
    /// transaction submitted by someone else creates it here from the payload.
    /// </summary>
    public async Task<BranchResult> OpenAsync(BranchContext context, CancellationToken ct)
    {
        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        if (await OrderStore.FindByGidAsync(connection, transaction, context.Gid, ct) is { } existing)
        {
            if (existing.Status == OrderStatus.Cancelled)
            {
                return context.Fail(StatusCodes.Status409Conflict, Problems.OrderState, "Order cancelled", $"Order {existing.OrderId} is cancelled.");
            }

            if (existing.Status == OrderStatus.Pending
                && !(await locks.TryAcquireAsync(context.Transaction, OrderStore.LockOf(existing.OrderId), context.Gid, ct)).Acquired)
            {
                return context.Fail(StatusCodes.Status409Conflict, Problems.OrderState, "Order in flight",
                    $"Order {existing.OrderId} is held by another transaction.");
            }

            return context.Ok(new OrderBranchResult(existing.OrderId, existing.Status, existing.Reason), ShopJsonContext.Web.OrderBranchResult);
        }

        var (payload, errors) = ReadPayload(context);
        if (payload is null)
        {
            return Branches.Invalid(context, errors!);
        }

        if (await OrderStore.FindAsync(connection, transaction, payload.OrderId, ct) is not null)
        {
            return context.Fail(StatusCodes.Status409Conflict, Problems.OrderState, "Order exists",
                $"Order {payload.OrderId} belongs to another transaction.");
        }

        var now = timeProvider.GetUtcNow();
        await OrderStore.InsertAsync(connection, transaction, payload with { Gid = context.Gid, CreatedAt = now, UpdatedAt = now }, ct);
        await locks.TryAcquireAsync(context.Transaction, OrderStore.LockOf(payload.OrderId), context.Gid, ct);
        Branches.MarkApplied(context);
        return context.Ok(new OrderBranchResult(payload.OrderId, OrderStatus.Pending, null), ShopJsonContext.Web.OrderBranchResult);
    }

    /// <summary>
    /// The outcome is abort (saga compensate, TCC cancel, 2PC rollback, 3PC abort): CANCELLED, with the transaction's reason, lock dropped.
    /// The kit runs it only when the create step took effect here; a compensation without it is a
    /// null compensation the kit answers itself, and the outbox's reconciliation cancels such an
    /// order once the coordinator reports the saga aborted.
    /// </summary>
    public async Task<BranchResult> CancelAsync(BranchContext context, CancellationToken ct)
    {
        var reason = context.HttpContext.Items[AbortReasonItem] as string ?? "the transaction was aborted";
        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        var order = await OrderStore.FindByGidAsync(connection, transaction, context.Gid, ct);
        if (order is null)
        {
            return Branches.Skipped(context, "nothing to cancel: there is no order for this transaction");
        }

        await locks.ReleaseAsync(context.Transaction, OrderStore.LockOf(order.OrderId), context.Gid, ct);
        if (order.Status == OrderStatus.Cancelled)
        {
            return context.Ok(new OrderBranchResult(order.OrderId, order.Status, order.Reason), ShopJsonContext.Web.OrderBranchResult);
        }

        await OrderStore.SetStatusAsync(connection, transaction, order.OrderId, OrderStatus.Cancelled, reason, timeProvider.GetUtcNow(), ct);
        Branches.MarkApplied(context);
        return context.Ok(new OrderBranchResult(order.OrderId, OrderStatus.Cancelled, reason), ShopJsonContext.Web.OrderBranchResult);
    }

    /// <summary>The outcome is commit (the saga's pivot, TCC confirm, 2PC commit, 3PC doCommit): PENDING becomes CONFIRMED and leaves PROCESSING.</summary>
    public async Task<BranchResult> ConfirmAsync(BranchContext context, CancellationToken ct)
    {
        var (connection, transaction) = ShopTransaction.Of(context.Transaction);
        var order = await OrderStore.FindByGidAsync(connection, transaction, context.Gid, ct);
        if (order is null)
        {
            return context.Fail(StatusCodes.Status409Conflict, Problems.OrderState, "No order", "There is no order for this transaction.");
        }

        switch (order.Status)
        {
            case OrderStatus.Cancelled:
                return context.Fail(StatusCodes.Status409Conflict, Problems.OrderState, "Order cancelled", $"Order {order.OrderId} is cancelled.");
            case OrderStatus.Confirmed:
                return context.Ok(new OrderBranchResult(order.OrderId, order.Status, null), ShopJsonContext.Web.OrderBranchResult);
            default:
                await OrderStore.SetStatusAsync(connection, transaction, order.OrderId, OrderStatus.Confirmed, null, timeProvider.GetUtcNow(), ct);
                await locks.ReleaseAsync(context.Transaction, OrderStore.LockOf(order.OrderId), context.Gid, ct);
                Branches.MarkApplied(context);
                return context.Ok(new OrderBranchResult(order.OrderId, OrderStatus.Confirmed, null), ShopJsonContext.Web.OrderBranchResult);
        }
    }

    /// <summary>Why the transaction aborted, as the coordinator says; a generic reason when it cannot be asked.</summary>
    public async Task<string> AbortReasonAsync(string gid, CancellationToken ct)
    {
        const string fallback = "the transaction was aborted";
        using var scope = logger.BeginGidScope(gid);
        using var timeout = new CancellationTokenSource(ReasonLookupTimeout, timeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, timeout.Token);
        try
        {
            while (true)
            {
                // 2PC's presumed abort sends its rollbacks before the abort is on the coordinator's
                // disk (and visible to readers): ask again, briefly, until the reason shows.
                var view = await saga.Client.GetAsync(gid, linked.Token);
                if (!string.IsNullOrEmpty(view?.Reason))
                {
                    return view.Reason;
                }

                await Task.Delay(TimeSpan.FromMilliseconds(50), timeProvider, linked.Token);
            }
        }
        catch (Exception e) when (e is HttpRequestException or Treaty.Client.TreatyApiException or JsonException
            || (e is OperationCanceledException && !ct.IsCancellationRequested))
        {
            LogReasonUnknown(gid, e.Message);
            return fallback;
        }
    }

    private static (OrderRow? Order, Dictionary<string, string[]>? Errors) ReadPayload(BranchContext context)
    {
        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        var payload = OrderPayload.Read(context.Payload);
        if (payload is null)
        {
            errors["payload"] = ["The payload must be an object with orderId, customerId, items and amount."];
            return (null, errors);
        }

        if (string.IsNullOrEmpty(payload.OrderId) || payload.OrderId.Length > 64)
        {
            errors["payload.orderId"] = ["orderId is required (at most 64 characters)."];
        }

        if (string.IsNullOrEmpty(payload.CustomerId) || payload.CustomerId.Length > MaxCustomerIdLength)
        {
            errors["payload.customerId"] = [$"customerId is required (at most {MaxCustomerIdLength} characters)."];
        }

        if (payload.Items is not { Count: > 0 and <= MaxItems } || payload.Items.Exists(i => i is null || string.IsNullOrEmpty(i.Sku) || i.Qty is < 1 or > MaxQty))
        {
            errors["payload.items"] = [$"items must list 1 to {MaxItems} lines, each with a sku and a qty from 1 to {MaxQty}."];
        }

        long cents = 0;
        if (payload.Amount is not { } amount || !Money.TryToCents(amount, out cents))
        {
            errors["payload.amount"] = ["amount must be a positive number with at most two decimals."];
        }

        if (errors.Count > 0)
        {
            return (null, errors);
        }

        return (new OrderRow(payload.OrderId!, "", payload.CustomerId!, cents, [.. payload.Items!.Select(i => i!)],
            OrderStatus.Pending, null, SubmitState.Accepted, default, default, ProtocolOf(context.HttpContext.Request.Path.Value)), null);
    }

    private sealed record ValidCheckout(string CustomerId, IReadOnlyList<OrderItem> Items, long AmountCents, string Protocol);

    /// <summary>The protocol of a branch endpoint, from its path (<c>/{protocol}/order/...</c>).</summary>
    private static string ProtocolOf(string? path) =>
        Array.Find(OrderTransaction.Protocols, p => path?.StartsWith("/" + p + "/", StringComparison.Ordinal) == true) ?? "saga";

    private static (ValidCheckout? Checkout, Dictionary<string, string[]> Errors) Validate(CheckoutRequest request)
    {
        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        var protocol = request.Protocol ?? "saga";
        if (!OrderTransaction.Protocols.Contains(protocol) && protocol != ChoreographyProtocol)
        {
            errors["protocol"] = ["protocol must be one of saga, tcc, 2pc, 3pc, choreography."];
        }

        if (string.IsNullOrWhiteSpace(request.CustomerId))
        {
            errors["customerId"] = ["customerId is required."];
        }
        else if (request.CustomerId.Length > MaxCustomerIdLength)
        {
            errors["customerId"] = [$"customerId is at most {MaxCustomerIdLength} characters."];
        }

        var items = new List<OrderItem>();
        long amount = 0;
        if (request.Items is not { Count: > 0 and <= MaxItems } lines)
        {
            errors["items"] = [$"items must list 1 to {MaxItems} lines."];
        }
        else
        {
            for (var i = 0; i < lines.Count; i++)
            {
                if (lines[i] is not { } line)
                {
                    errors[$"items[{i}]"] = ["Each line is an object with sku and qty."];
                    continue;
                }

                Product? product = null;
                if (string.IsNullOrWhiteSpace(line.Sku))
                {
                    errors[$"items[{i}].sku"] = ["sku is required."];
                }
                else if (!Catalogue.Products.TryGetValue(line.Sku, out product))
                {
                    errors[$"items[{i}].sku"] = [$"Unknown SKU '{(line.Sku.Length > 40 ? line.Sku[..40] + "…" : line.Sku)}'."];
                }

                if (line.Qty is not (>= 1 and <= MaxQty))
                {
                    errors[$"items[{i}].qty"] = [$"qty must be a whole number from 1 to {MaxQty}."];
                }

                if (product is not null && line.Qty is { } qty and >= 1 and <= MaxQty)
                {
                    items.Add(new OrderItem(product.Sku, qty));
                    amount += product.PriceCents * qty;
                }
            }
        }

        if (errors.Count > 0)
        {
            return (null, errors);
        }

        return (new ValidCheckout(request.CustomerId!, items, amount, protocol), errors);
    }

    private static string NewOrderId() => "ord-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));

    [LoggerMessage(EventId = 10, Level = LogLevel.Warning, Message = "Could not ask the coordinator why {Gid} aborted: {Detail}")]
    private partial void LogReasonUnknown(string gid, string detail);
}
