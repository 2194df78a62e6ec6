using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Shop.Infrastructure;
using Treaty.Client;
using Treaty.Core.Contracts;

namespace Shop.Order;

/// <summary>How a submit to the coordinator ended.</summary>
internal enum SubmitOutcome
{
    /// <summary>The coordinator has the transaction.</summary>
    Accepted,
    /// <summary>The coordinator refused it for good (a 4xx): it will never run.</summary>
    Rejected,
    /// <summary>Unknown (unreachable, timeout, 5xx): submit again; the gid makes that safe.</summary>
    Unavailable,
}

/// <summary>The checkout saga: its definition and its submission.</summary>
internal sealed partial class OrderSaga(ShopOptions options, TreatyClient client, IServer server, TimeProvider timeProvider, ILogger<OrderSaga> logger)
{
    private static readonly TimeSpan SubmitTimeout = TimeSpan.FromSeconds(10);

    public TreatyClient Client => client;

    public static string GidOf(string orderId) => "checkout-" + orderId;

    /// <summary>
    /// The definition, a pure function of the order and the configured URLs, so every resubmission
    /// of one order sends the same body (the coordinator then recognises it by its gid).
    /// </summary>
    public SubmitTransactionRequest Build(OrderRow order)
    {
        var self = SelfUrl();
        var payment = Trim(options.PaymentUrl!);
        var inventory = Trim(options.InventoryUrl!);
        var payload = new SagaPayload
        {
            OrderId = order.OrderId,
            CustomerId = order.CustomerId,
            Items = [.. order.Items],
            Amount = Money.FromCents(order.AmountCents),
        };
        return new SagaBuilder(order.Gid)
            .WithPayload(payload, ShopJsonContext.Web.SagaPayload)
            .Step("order", action: $"{self}/saga/order/create", compensate: $"{self}/saga/order/cancel")
            .Step("payment", action: $"{payment}/saga/payment/reserve", compensate: $"{payment}/saga/payment/refund")
            .Step("inventory", action: $"{inventory}/saga/inventory/reserve", compensate: $"{inventory}/saga/inventory/release")
            // The point of no return: once the order is confirmed the saga only moves forward.
            .Step("confirm", action: $"{self}/saga/order/confirm", pivot: true)
            // After the pivot: the stock reservation becomes a sale (its semantic lock is dropped).
            .Step("stock", action: $"{inventory}/saga/inventory/commit")
            .Build();
    }

    public async Task<(SubmitOutcome Outcome, string? Detail)> SubmitAsync(OrderRow order, CancellationToken cancellationToken)
    {
        using var timeout = new CancellationTokenSource(SubmitTimeout, timeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        try
        {
            await client.SubmitAsync(Build(order), wait: null, linked.Token);
            return (SubmitOutcome.Accepted, null);
        }
        catch (TreatyApiException e) when (e.StatusCode == StatusCodes.Status409Conflict && e.Type == ProblemTypes.GidConflict)
        {
            // The gid exists: an earlier attempt got through (perhaps with URLs since changed).
            return (SubmitOutcome.Accepted, null);
        }
        catch (TreatyApiException e) when (!e.IsTransient)
        {
            LogRejected(order.Gid, e.Message);
            return (SubmitOutcome.Rejected, e.Message);
        }
        catch (TreatyApiException e)
        {
            LogUnavailable(order.Gid, e.Message);
            return (SubmitOutcome.Unavailable, e.Message);
        }
        catch (HttpRequestException e)
        {
            LogUnavailable(order.Gid, e.Message);
            return (SubmitOutcome.Unavailable, e.Message);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            LogUnavailable(order.Gid, "no answer within " + SubmitTimeout);
            return (SubmitOutcome.Unavailable, "the coordinator did not answer in time");
        }
    }

    /// <summary>This service's address for the coordinator's callbacks.</summary>
    public string SelfUrl()
    {
        if (options.PublicUrl is { } configured)
        {
            return Trim(configured);
        }

        var bound = server.Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault()
            ?? options.Urls.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)[0];
        // A wildcard binding cannot be called back: use loopback.
        bound = bound.Replace("://*", "://127.0.0.1", StringComparison.Ordinal)
            .Replace("://+", "://127.0.0.1", StringComparison.Ordinal)
            .Replace("://0.0.0.0", "://127.0.0.1", StringComparison.Ordinal)
            .Replace("://[::]", "://[::1]", StringComparison.Ordinal);
        return Trim(bound);
    }

    private static string Trim(string url) => url.TrimEnd('/');

    [LoggerMessage(EventId = 1, Level = LogLevel.Warning, Message = "The coordinator rejected transaction {Gid}: {Detail}")]
    private partial void LogRejected(string gid, string detail);

    [LoggerMessage(EventId = 2, Level = LogLevel.Warning, Message = "Could not submit transaction {Gid}, will submit it again: {Detail}")]
    private partial void LogUnavailable(string gid, string detail);
}

/// <summary>
/// The outbox of checkouts. A checkout stores its order with <c>submit_state = 'unsent'</c> in the
/// kit's transaction (with the stored 202), and nothing else: no network call while it holds the
/// SQLite write turn. Once that transaction has committed and the answer is out, the checkout pokes
/// this loop (<see cref="Poke"/>), which submits every unsent order to the coordinator and records
/// the outcome; it also runs every <see cref="Period"/>, so an order whose poke was lost (the
/// process died after the commit, the coordinator was down) is submitted later. Submitting is
/// idempotent on the gid (<c>checkout-{orderId}</c>), so a submit repeated after a crash is harmless.
/// The same loop reconciles accepted orders left PENDING whose saga the coordinator says aborted
/// (a compensation of the order step that the barrier answered as a null compensation never
/// reaches the handler): they become CANCELLED and their semantic lock is dropped.
/// </summary>
internal sealed partial class OrderOutbox(ShopDatabase database, OrderSaga saga, OrderService service, TimeProvider timeProvider, ILogger<OrderOutbox> logger)
    : BackgroundService
{
    private static readonly TimeSpan Period = TimeSpan.FromSeconds(2);

    // How long an accepted order may stay PENDING untouched before the coordinator is asked about it.
    private static readonly TimeSpan StaleAfter = TimeSpan.FromSeconds(20);

    private readonly System.Threading.Channels.Channel<bool> _pokes = System.Threading.Channels.Channel.CreateBounded<bool>(
        new System.Threading.Channels.BoundedChannelOptions(1) { FullMode = System.Threading.Channels.BoundedChannelFullMode.DropWrite });

    /// <summary>Asks for a submit round now (after a checkout committed).</summary>
    public void Poke() => _pokes.Writer.TryWrite(true);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await SubmitUnsentAsync(stoppingToken);
                await ReconcileAsync(stoppingToken);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (e is Microsoft.Data.Sqlite.SqliteException or TimeoutException or InvalidOperationException)
            {
                LogFailed(e); // try again on the next round
            }

            using var timeout = new CancellationTokenSource(Period, timeProvider);
            using var wake = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken, timeout.Token);
            try
            {
                await _pokes.Reader.ReadAsync(wake.Token);
            }
            catch (OperationCanceledException) when (!stoppingToken.IsCancellationRequested)
            {
                // the period passed
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private async Task SubmitUnsentAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            var unsent = await database.ReadAsync(c => OrderStore.UnsentAsync(c, timeProvider.GetUtcNow(), cancellationToken), cancellationToken);
            if (unsent.Count == 0)
            {
                return;
            }

            foreach (var order in unsent)
            {
                var (outcome, detail) = await saga.SubmitAsync(order, cancellationToken);
                await service.RecordSubmitAsync(order, outcome, detail, cancellationToken);
                if (outcome == SubmitOutcome.Unavailable)
                {
                    return; // the coordinator is down: the rest on the next round
                }
            }
        }
    }

    private async Task ReconcileAsync(CancellationToken cancellationToken)
    {
        var stale = await database.ReadAsync(c => OrderStore.StalePendingAsync(c, timeProvider.GetUtcNow() - StaleAfter, 20, cancellationToken), cancellationToken);
        foreach (var order in stale)
        {
            TransactionView? view;
            try
            {
                view = await saga.Client.GetAsync(order.Gid, cancellationToken);
            }
            catch (Exception e) when (e is HttpRequestException or Treaty.Client.TreatyApiException or System.Text.Json.JsonException)
            {
                return; // the coordinator is unreachable: next round
            }

            if (view is { Status: "aborted" })
            {
                await service.CancelStaleAsync(order, string.IsNullOrEmpty(view.Reason) ? "the transaction was aborted" : view.Reason, cancellationToken);
            }
        }
    }

    [LoggerMessage(EventId = 3, Level = LogLevel.Error, Message = "The checkout outbox round failed")]
    private partial void LogFailed(Exception exception);
}
