using Microsoft.AspNetCore.Builder;
using Shop.Infrastructure;
using Treaty.AspNetCore.Barrier;

namespace Shop.Payment;

/// <summary>
/// The Payment service's part in every protocol, on the effects of <see cref="Wallet"/>. The saga
/// takes the money at once and gives it back if the order fails (a reader sees it gone meanwhile:
/// the saga has no isolation); TCC, 2PC and 3PC first <b>hold</b> it (balance → held), then
/// <b>capture</b> it (a debit in the ledger) or <b>release</b> it. Every endpoint runs behind the
/// participant kit's barrier (<c>MapBranch</c>).
/// </summary>
internal static class PaymentEndpoints
{
    public static void Map(WebApplication app, Wallet wallet)
    {
        // Saga: debit now; the compensation refunds exactly that debit.
        app.MapBranch("/saga/payment/reserve", wallet.DebitAsync);
        app.MapBranch("/saga/payment/refund", wallet.RefundAsync);

        // TCC: try holds the amount, confirm captures it, cancel releases it.
        app.MapBranch("/tcc/payment/{op}", (ctx, ct) => ctx.Op switch
        {
            "try" => wallet.HoldAsync(ctx, lockRow: false, ct),
            "confirm" => wallet.CaptureAsync(ctx, ct),
            "cancel" => wallet.ReleaseAsync(ctx, ct),
            _ => Branches.UnexpectedOp(ctx),
        });

        // 2PC: a YES vote holds the amount and locks the wallet row until the outcome.
        app.MapBranch("/2pc/payment/{op}", (ctx, ct) => ctx.Op switch
        {
            "prepare" => wallet.HoldAsync(ctx, lockRow: true, ct),
            "commit" => wallet.CaptureAsync(ctx, ct),
            "rollback" => wallet.ReleaseAsync(ctx, ct),
            _ => Branches.UnexpectedOp(ctx),
        });

        // 3PC: canCommit votes like prepare; preCommit acknowledges.
        app.MapBranch("/3pc/payment/{op}", (ctx, ct) => ctx.Op switch
        {
            "canCommit" => wallet.HoldAsync(ctx, lockRow: true, ct),
            "preCommit" => Branches.Acknowledge(ctx),
            "doCommit" => wallet.CaptureAsync(ctx, ct),
            "abort" => wallet.ReleaseAsync(ctx, ct),
            _ => Branches.UnexpectedOp(ctx),
        });
    }
}
