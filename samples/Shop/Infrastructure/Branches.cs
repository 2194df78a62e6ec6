using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.Signatures;
using Treaty.Core.Contracts;

namespace Shop.Infrastructure;

/// <summary>
/// The Shop's branch endpoints on the participant kit: every one goes through the kit's branch
/// barrier (<see cref="BarrierEndpointRouteBuilderExtensions.MapTreatyBranch"/>: duplicates
/// replayed, null compensations and late actions answered without running the handler) and, when
/// the service has a callback secret, requires the coordinator's <c>Treaty-Signature</c>.
/// </summary>
internal static class Branches
{
    /// <summary>Set by a handler that changed business data; counted by <c>/_faults/calls</c> once the barrier committed it.</summary>
    public const string AppliedItem = "shop.branch.applied";

    public static IEndpointConventionBuilder MapBranch(this IEndpointRouteBuilder app, string pattern, BranchHandler handler) =>
        app.MapTreatyBranch(pattern, handler).RequireTreatySignature();

    /// <summary>Says that this call really applied an effect (a debit, a reservation, a status change).</summary>
    public static void MarkApplied(BranchContext context) => context.HttpContext.Items[AppliedItem] = true;

    /// <summary>A payload that does not fit: a definitive 400 naming the fields (nothing applied).</summary>
    public static BranchResult Invalid(BranchContext context, IReadOnlyDictionary<string, string[]> errors) =>
        context.Fail(StatusCodes.Status400BadRequest, ProblemTypes.Validation, "Invalid payload",
            "The transaction payload is invalid: " + string.Join(", ", errors.Keys) + ".");

    /// <summary>An op this endpoint does not serve (the transaction was defined with the wrong URL): a definitive 400.</summary>
    public static Task<BranchResult> UnexpectedOp(BranchContext context) =>
        Task.FromResult(context.Fail(StatusCodes.Status400BadRequest, ProblemTypes.Validation, "Unexpected op",
            $"This endpoint does not serve the op '{context.Op}'."));

    /// <summary>3PC's preCommit: nothing to write (the kit records the stage); the 2xx is the acknowledgement.</summary>
    public static Task<BranchResult> Acknowledge(BranchContext context) =>
        Task.FromResult(context.Ok(new BranchSkipped(context.Gid, context.Branch, context.Op, false, "acknowledged"), ShopJsonContext.Web.BranchSkipped));

    /// <summary>A 200 that says nothing was done, and why.</summary>
    public static BranchResult Skipped(BranchContext context, string reason) =>
        context.Ok(new BranchSkipped(context.Gid, context.Branch, context.Op, true, reason), ShopJsonContext.Web.BranchSkipped);
}
