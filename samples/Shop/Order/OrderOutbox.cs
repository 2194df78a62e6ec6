using Shop.Infrastructure;
using Treaty.Core.Contracts;
using Treaty.Core.Diagnostics;

namespace Shop.Order;

/// <summary>
/// The outbox of checkouts. A checkout stores its order with <c>submit_state = 'unsent'</c> in the
/// kit's transaction (with the stored 202), and nothing else: no network call while it holds the
/// SQLite write turn. Once that transaction has committed and the answer is out, the checkout pokes
/// this loop (<see cref="Poke"/>), which submits every unsent order to the coordinator and records
/// the outcome; it also runs every 2 seconds (sooner with a short --in-doubt-after), so an order whose poke was lost (the
/// process died after the commit, the coordinator was down) is submitted later. Submitting is
/// idempotent on the gid (<c>checkout-{orderId}</c>), so a submit repeated after a crash is harmless.
/// The same loop reconciles accepted orders left PENDING whose saga the coordinator says aborted
/// (a compensation of the order step that the barrier answered as a null compensation never
/// reaches the handler): they become CANCELLED and their semantic lock is dropped.
/// </summary>
internal sealed partial class OrderOutbox(ShopDatabase database, OrderTransaction saga, OrderService service, ShopOptions options, TimeProvider timeProvider, ILogger<OrderOutbox> logger)
    : BackgroundService
{
    private readonly TimeSpan _period = options.InDoubtAfter < TimeSpan.FromSeconds(4) ? options.InDoubtAfter / 2 : TimeSpan.FromSeconds(2);


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
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // Whatever it was, the order rows are the truth and the next round starts from them;
                // an exception escaping here would stop the whole service (the host's default).
                LogFailed(e);
            }

            using var timeout = new CancellationTokenSource(_period, timeProvider);
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
                // One order at a time, in its gid's scope (the submit, the record, the lock it drops).
                using var scope = logger.BeginGidScope(order.Gid);
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
        var stale = await database.ReadAsync(c => OrderStore.StalePendingAsync(c, timeProvider.GetUtcNow() - options.InDoubtAfter, 20, cancellationToken), cancellationToken);
        foreach (var order in stale)
        {
            using var scope = logger.BeginGidScope(order.Gid);
            TransactionView? view;
            try
            {
                view = await saga.Client.GetAsync(order.Gid, cancellationToken);
            }
            catch (Exception e) when (e is HttpRequestException or System.Net.Sockets.SocketException or IOException or Treaty.Client.TreatyApiException or System.Text.Json.JsonException)
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
